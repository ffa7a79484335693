"""Each of the paper's claims, sorted by what this project's runs show (the verdict table).

A claim names the ablation that tests it at teaching scale, the direction the paper reports, the
budget sweep (if any) that shows how our difference moves as training grows, and what holds at any
scale — what the design choice buys whatever the training budget (bytes, cache, FLOPs, latency).
``verdict_table()`` turns the cached runs into one Markdown table; ``classify`` is the rule.

Classes:
- **reproduces**: our paired difference points the paper's way and the 95% interval excludes zero
  (or, for a claim of *no* difference, the seeds disagree in sign);
- **leans the paper's way**: every seed agrees with the paper but the interval still reaches zero;
- **inside the noise**: the seeds disagree in sign;
- **reverses here, trends toward the paper**: our difference points the other way, and it shrinks
  toward the paper's direction as the budget grows (the trend's slope interval excludes zero);
- **reverses, no trend**: the other way, with no such trend measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..accounting import kv_cache_bytes_per_token, param_count
from ..config import get_config
from . import ablations as A
from . import experiments as E
from . import paper, paths
from .paired import Paired, Trend, log_trend


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and where the course tests it."""

    name: str
    paper: str  # the paper's number, as text
    expect: int  # -1: the variant is better (lower loss); 0: no difference; +1: the variant is slightly worse
    ablation: E.Ablation
    reference: str
    variant: str
    trend: tuple[E.Ablation, ...] = ()
    any_scale: str = ""


def _kv_ratio() -> float:
    c = get_config("mobilellm-125m")
    return kv_cache_bytes_per_token(c.replace(n_kv_heads=c.n_heads), "bf16") / kv_cache_bytes_per_token(c, "bf16")


def _tied_saving() -> str:
    c = get_config("mobilellm-125m")
    untied = param_count(c.replace(share_embedding=False))["total"]
    saved = untied - param_count(c)["total"]
    return f"{saved / 1e6:.1f}M parameters, {saved / untied:.1%} of the untied 125M"


def _sharing_cost() -> str:
    """Per-token decode time, immediate sharing over unshared, at 125M: ours from the committed bench
    report (eager fp32 on this CPU), the paper's from its iPhone table."""
    ms = paper.IPHONE13_MS
    theirs = f"paper, iPhone: ×{ms['MobileLLM-LS-125M'][2] / ms['MobileLLM-125M'][2]:.2f}"
    path = paths.RESULTS_DIR / "bench.json"
    try:
        rows = {v["name"]: v for v in json.loads(path.read_text())["sharing"][0]["variants"]}
        ours = rows["immediate"]["ms_per_token"] / rows["unshared"]["ms_per_token"]
    except (OSError, ValueError, KeyError, IndexError):
        return f"stored bytes unchanged, executed layers ×2 ({theirs}; run `make bench` for this CPU's)"
    return f"stored bytes unchanged, executed layers ×2; per token ×{ours:.2f} on this CPU, eager fp32 ({theirs})"


def claims() -> list[Claim]:
    """The claims the course tests, in the order of the notebooks."""
    r, z, e = paper.ROADMAP_125M, paper.ZERO_SHOT, paper.EMBEDDING_SHARING
    return [
        Claim(
            "SwiGLU beats FC-ReLU-FC at equal parameters",
            f"{paper.step(r, 'baseline', '+ SwiGLU'):+.1f} points",
            -1,
            A.SWIGLU,
            "ReLU (baseline)",
            "SwiGLU",
            any_scale="equal parameters and equal FLOPs per token: trying it is free",
        ),
        Claim(
            "deeper and thinner beats shallow and wide",
            f"{paper.step(r, '+ SwiGLU', '+ deep & thin'):+.1f} points",
            -1,
            A.DEPTH,
            "2×56",
            "8×32",
            A.DEPTH_TREND,
            any_scale="more sequential layers: slower per token on a CPU at equal parameters",
        ),
        Claim(
            "sharing the embeddings costs little",
            f"{paper.step(r, '+ deep & thin', '+ tied embeddings'):+.1f} points",
            +1,
            A.EMBEDDING,
            "untied",
            "tied",
            A.EMBEDDING_TREND,
            any_scale=f"one vocab × dim table fewer: {_tied_saving()}",
        ),
        Claim(
            "the saving spent on depth gains",
            f"{paper.step(e, 'untied, 30 layers (135M)', 'tied, 32 layers (125M)'):+.1f} points (tied + 2 layers "
            "vs untied)",
            -1,
            A.EMBEDDING,
            "untied",
            "tied + 1 layer",
            any_scale="same parameters as untied, one more layer to run",
        ),
        Claim(
            "fewer KV heads cost nothing",
            "no loss (16 → 4 KV heads)",
            0,
            A.GQA,
            "MHA (4 KV heads)",
            "GQA (2 KV heads)",
            any_scale=f"KV cache {_kv_ratio():.0f}× smaller at 125M (9 query heads, 3 KV heads)",
        ),
        Claim(
            "immediate layer sharing gains at equal stored parameters",
            f"{z['MobileLLM-LS-125M'] - z['MobileLLM-125M']:+.1f} points (1T tokens)",
            -1,
            A.SHARING,
            "no sharing",
            "immediate ×2",
            A.SHARING_TREND,
            any_scale=_sharing_cost(),
        ),
        Claim(
            "sharing gains where parameters are scarce (31k, ~300 tokens/param)",
            "(the paper's mechanism)",
            -1,
            A.SHARING_SCARCE,
            "no sharing",
            "immediate ×2",
            any_scale="as above",
        ),
    ]


def classify(expect: int, p: Paired, trend: Trend | None) -> str:
    """The class of one claim from our paired difference at the main budget and its budget trend."""
    if p.verdict == "one seed":
        return "one seed: not yet classified"
    if expect == 0:
        return "reproduces" if p.verdict in ("mixed", "equal") else "reverses" + _trend_text(expect, p, trend)
    if p.verdict == "mixed":
        return "inside the noise"
    ours = 1 if p.mean > 0 else -1
    if ours == expect:
        return "reproduces" if p.verdict in ("better", "worse") else "leans the paper's way"
    return "reverses" + _trend_text(expect, p, trend)


def _trend_text(expect: int, p: Paired, trend: Trend | None) -> str:
    if trend is None or trend.n < 3:
        return ", no trend measured"
    low, high = trend.slope_interval()
    # Toward the paper: the difference moves in the paper's direction as the budget grows. For a
    # claim of no difference, toward zero.
    toward = -1 if p.mean > 0 else 1
    if (toward < 0 and high < 0) or (toward > 0 and low > 0):
        return " here, trends toward the paper"
    return ", no trend"


def _trend(claim: Claim) -> tuple[Trend | None, str]:
    if not claim.trend:
        return None, "not measured"
    runs, _ = E.trend_runs(list(claim.trend), claim.reference, claim.variant)
    xs, ys = [], []
    for tokens, recs in runs.items():
        p = E.compare(recs, claim.reference, claim.variant)
        per_param = tokens / next(r.params for r in recs if r.label == claim.reference)
        xs += [per_param] * p.n
        ys += list(p.diffs)
    if len(set(xs)) < 2 or len(xs) < 3:
        return None, "not enough budgets yet"
    t = log_trend(xs, ys)
    low, high = t.slope_interval()
    return t, (
        f"{t.slope:+.3f} [{low:+.3f}, {high:+.3f}] per 10× tokens "
        f"({len(set(xs))} budgets, {min(xs):.0f}–{max(xs):.0f} tokens/param)"
    )


def verdict_table() -> str:
    """Every claim: the paper's number, ours (paired), its budget trend, what holds at any scale, a class."""
    rows = [
        "| claim | paper | ours: variant − reference, paired by seed (nats) | as the budget grows | "
        "holds at any scale | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in claims():
        found, _ = E.cached_runs(c.ablation)
        labels = {r.label for r in found}
        if not {c.reference, c.variant} <= labels:
            rows.append(
                f"| {c.name} | {c.paper} | not run yet (`python -m mobilellm ablation {c.ablation.name}`) "
                f"| | {c.any_scale} | — |"
            )
            continue
        p = E.compare(found, c.reference, c.variant)
        trend, trend_text = _trend(c)
        rows.append(
            f"| {c.name} | {c.paper} | {c.variant} − {c.reference}: {p.text()} | {trend_text} | "
            f"{c.any_scale} | **{classify(c.expect, p, trend)}** |"
        )
    note = (
        "\n\nOurs: validation loss at ~19 tokens per parameter (the 31k-parameter sharing test: ~300), lower "
        "is better, so a negative difference means the paper's choice helped. The budget trend is a straight "
        "line through the per-seed differences against log10(tokens per parameter), with its 95% interval; "
        "a negative slope means the variant gains as training grows. Generated by "
        "`mobilellm.claims.verdict_table()` from `data/results/`."
    )
    return "\n".join(rows) + note
