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
from . import evidence as V
from . import experiments as E
from . import paper, paths
from .paired import Paired, Trend
from .settings import Settings


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
    best_of: tuple[str, ...] = ()  # read the trend as the best of these variants at each budget
    repeated: E.Ablation | None = None  # the repetition test: the trend's 3x budget on a fraction of the corpus


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
            "3×48",  # the roadmap's step: notebook 02's SwiGLU model to the deep-and-thin shape
            "5×40",
            A.DEPTH_TREND,
            any_scale="more sequential layers: slower per token on a CPU at equal parameters",
            best_of=("2×56", "5×40", "8×32"),
            repeated=A.DEPTH_REPEAT,
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
            repeated=A.EMBEDDING_REPEAT,
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
    """The claim's budget trend and its text; for a ``best_of`` claim the trend is the winner per budget."""
    if not claim.trend:
        return None, "not measured"
    settings = Settings()
    if claim.best_of:  # the winner per budget; the repetition test on the extremes
        best = _best_text(V.best_depth(list(claim.trend), claim.best_of, settings))
        a, b = claim.best_of[0], claim.best_of[-1]
        points, _ = V.budget_points(list(claim.trend), a, b, settings)
        return None, best + _repetition_text(claim, V.fit_trend(points).slope, settings, a, b)
    points, _ = V.budget_points(list(claim.trend), claim.reference, claim.variant, settings)
    if len(points) < 2 or sum(pt.paired.n for pt in points) < 3:
        return None, "not enough budgets yet"
    t = V.fit_trend(points)
    low, high = t.slope_interval()
    text = (
        f"{t.slope:+.3f} [{low:+.3f}, {high:+.3f}] per 10× tokens ({len(points)} budgets, "
        f"{points[0].tokens_per_param:.0f}–{points[-1].tokens_per_param:.0f} tokens/param, "
        f"{points[0].passes:.1f}–{points[-1].passes:.1f} passes)"
    )
    return t, text + _repetition_text(claim, t.slope, settings, claim.reference, claim.variant)


def _best_text(rows: list[V.DepthRow]) -> str:
    parts = []
    for r in rows:
        ties = [lab for lab, p in r.against.items() if p.verdict == "mixed"]
        won = f"{r.winner}, lowest on {r.wins_on}/{r.seeds} seeds" + (f", level with {', '.join(ties)}" if ties else "")
        parts.append(f"≈{r.tokens_per_param:.0f} tokens/param ({r.passes:.1f} passes): {won}")
    return "best shape per budget: " + "; ".join(parts)


def _repetition_text(claim: Claim, slope: float, settings: Settings, a: str, b: str) -> str:
    if claim.repeated is None:
        return ""
    full = next(ab for ab in claim.trend if ab.recipe.tokens == claim.repeated.recipe.tokens)
    try:
        test = V.repetition_test(full, claim.repeated, a, b, settings)
    except ValueError:  # not cached yet
        return f"; repetition test not run yet (`python -m mobilellm ablation {claim.repeated.name}`)"
    return f". Repetition test ({b} − {a}): {test.reading(slope)}"


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
    train_tokens = len(E.load_data(A.DEPTH.recipe).train)
    note = (
        "\n\nOurs: validation loss at ~19 tokens per parameter (the 31k-parameter sharing test: ~300), lower "
        "is better, so a negative difference means the paper's choice helped. The budget trend is a straight "
        "line through the per-seed differences against log10(tokens per parameter), with its 95% interval; "
        "a negative slope means the variant gains as training grows. Passes: how many times each training "
        f"token was read (every run reads the same {train_tokens / 1e6:.1f}M-token text, so larger budgets "
        "repeat it; the repetition test trains the same tokens on a third of the text). Generated by "
        "`mobilellm.course.claims.verdict_table()` from `data/results/`."
    )
    return "\n".join(rows) + note
