"""The README's generated sections: the notebook map, the ablation table, the training budget, the verdicts.

``make figures`` rewrites them after running the notebooks, from what the run measured (wall times,
and each ablation's finding from ``data/results/``); nothing in them is typed by hand.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

from .._files import write_atomic
from . import experiments, paths
from .ablations import ABLATIONS
from .evidence import rederive_seconds
from .experiments import compare, is_cached, run_ablation, summarize
from .notebooks import NOTEBOOKS_DIR, TIMES_FILE, notebooks
from .paths import README
from .settings import Settings
from .workshop import WORDS_PER_MINUTE, prose_words, workshop

# notebook stem: (what it builds, the paper's reference, (ablation, base label, changed label) or None)
CURRICULUM = {
    "00_setup_and_data": (
        "environment check, the embedded corpus, a SentencePiece tokenizer, packed batches",
        "—",
        None,
    ),
    "01_baseline": (
        "RMSNorm, RoPE, MHA, ReLU FFN, untied embeddings by hand; the training loop; samples",
        "baseline 12 layers, 125M: avg 42.6",
        None,
    ),
    "02_swiglu": (
        "FC-ReLU-FC → SwiGLU at equal parameters (3 seeds)",
        "42.6 → 43.9",
        ("swiglu", "ReLU (baseline)", "SwiGLU"),
    ),
    "03_deep_and_thin": (
        "depth vs width at 132k parameters (5 shapes × 3 seeds); time per token by shape",
        "12 → 30 layers: 43.9 → 44.8",
        ("depth", "3×48", "5×40"),
    ),
    "04_embedding_sharing": (
        "where parameters go; tying checked by data_ptr; untied vs tied vs tied + one layer",
        "135M/44.8 → 119M/44.6 → 125M/45.0",
        ("embedding", "untied", "tied + 1 layer"),
    ),
    "05_grouped_query_attention": (
        "MHA → GQA → MQA by repeat_interleave; KV-cache sizes; cached decoding",
        "16 → 4 KV heads: no loss",
        ("gqa", "MHA (4 KV heads)", "GQA (2 KV heads)"),
    ),
    "06_layer_sharing": (
        "three sharing orders; a KV cache kept correct under sharing (and the official bug); "
        "no sharing vs immediate vs 12 layers; latency",
        "125M 46.3 → 47.0 (1T tokens); latency +2.6% (shared) vs +86% (2× deeper)",
        ("sharing", "no sharing", "immediate ×2"),
    ),
    "07_roadmap": (
        "the whole path in one chain; your complete MobileLLM; the final model trained 3× longer; the verdict table",
        "42.6 → 43.9 → 44.8 → 44.6 → 45.0 (0.25T); 46.3 → 47.0 (1T)",
        ("roadmap", "baseline", "+ layer sharing"),
    ),
    "08_full_size": (
        "the released configs: parameters, memory, FLOPs, pretraining cost; loading the checkpoints",
        "124.6M … 1.51B; 3–18 days on 32×A100",
        None,
    ),
    "09_zero_shot_eval": (
        "lm-eval-exact multiple-choice scoring, acc vs acc_norm; teaching models against chance",
        "125M avg 46.3, 350M 51.3",
        None,
    ),
    "10_int8_export": (
        "int8 by hand, then W8A8 with torchao; an ExecuTorch .pte; the 125M exported",
        "W8A8 < 0.5 points lost; 125M 15.6 ms/token on iPhone 13",
        None,
    ),
    "11_on_device": (
        "a KV-cached .pte generating text; fp32 / int8 / 8da4w size and quality; the sharing "
        "latency table in ExecuTorch at the 125M's width, beside three peers",
        "125M 15.6 / LS 16.0 / 60 layers 29.0 ms/token (iPhone 13); int8 < 0.5 points",
        None,
    ),
    "12_evidence": (
        "appendix: the budget trends, the repetition test, the best depth per budget, the on-device "
        "analysis, re-deriving a cached run",
        "0.25T tokens ≈ 2,000 tokens per parameter at 125M",
        None,
    ),
    "13_glossary": ("the course's terms, each with the notebook that introduces it", "—", None),
}


# The README is generated from the committed results cache, whatever the environment says: every
# seed, nothing retrained.
_CACHED = Settings()


def finding(spec: tuple[str, str, str] | None) -> str:
    """One line for an ablation: our difference against the noise (from the results cache)."""
    if spec is None:
        return "—"
    name, base, changed = spec
    records = run_ablation(ABLATIONS[name], _CACHED) if is_cached(ABLATIONS[name], _CACHED) else None
    if records is None:
        return "not run yet"
    return f"{changed} − {base}: {compare(records, base, changed).text()} nats"


def notebook_map() -> str:
    """The README's notebook table, from the curriculum, the stored times and the results cache."""
    times = json.loads(TIMES_FILE.read_text()) if TIMES_FILE.is_file() else {}
    rows = [
        "| notebook | builds | paper | ours (validation loss, teaching scale) | reading + run |",
        "|---|---|---|---|---|",
    ]
    for path in notebooks():
        builds, paper, spec = CURRICULUM.get(path.stem, ("", "", None))
        t = times.get(path.stem)
        run = f"{t['seconds'] / 60:.1f}{' (fresh)' if t.get('fresh') else ''}" if t else "—"
        when = f"{prose_words(path) / WORDS_PER_MINUTE:.0f} + {run} min"
        rows.append(f"| [{path.stem}](notebooks/{path.name}) | {builds} | {paper} | {finding(spec)} | {when} |")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return "\n".join(rows) + (
        f"\n\n<sub>Reading: the prose at {WORDS_PER_MINUTE} words a minute; run: the notebook's time in `make figures` "
        f"with the results cache, 2 cores. Generated by `make figures` on {stamp} from `data/results/`.</sub>"
    )


def ablation_table() -> str:
    """Every ablation in the project whose runs are cached, one row per variant, as Markdown, with
    each variant's paired difference from the ablation's first variant."""
    rows = [
        "| ablation (time to re-derive) | variant | stored params | executed layers | tokens (passes) | seeds "
        "| validation loss | − first variant, paired by seed |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    missing = []
    for name, ab in ABLATIONS.items():
        if name.endswith("-budget-1x") or name.endswith("-trend-1x"):  # the ablation it sweeps, already listed
            continue
        if not is_cached(ab, _CACHED):
            missing.append(name)
            continue
        records = run_ablation(ab, _CACHED)
        summary = summarize(records)
        best = min(summary, key=lambda s: s["mean"])["label"]
        first = summary[0]["label"]
        minutes = rederive_seconds(ab, _CACHED) / 60
        passes = experiments.passes(ab.recipe)
        for i, s in enumerate(summary):
            cfg = ab.config(s["label"])
            loss = f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["n_seeds"] > 1 else "")
            loss = f"**{loss}**" if s["label"] == best else loss
            diff = "—" if i == 0 else compare(records, first, s["label"]).text()
            rows.append(
                f"| {f'{name} ({minutes:.0f} min)' if i == 0 else ''} | {s['label']} | {s['params']:,} | "
                f"{cfg.n_executed_layers} | {s['tokens'] / 1e6:.2f}M ({passes:.1f}) | {s['n_seeds']} | {loss} "
                f"| {diff} |"
            )
    note = (
        "\n\nMean ± standard deviation over seeds of the final validation loss (nats/token, lower is better; "
        "the lowest in each ablation in bold). The last column pairs runs by seed (same seed: same "
        "initialisation and batch order): the mean difference with its 95% t-interval and how many seeds "
        "agree in sign; *better*/*worse* when the interval excludes zero, *leaning* when every seed agrees "
        "but the interval reaches zero, *mixed* when the seeds disagree. Passes: how many times the run read "
        "its training text. Every number can be re-derived: `python -m mobilellm verify NAME` trains the "
        "ablation's cached runs again into a temporary folder (`--variant`, `--seeds` pick a few) and prints "
        "each loss beside the stored one; the time beside each name is what its runs took when trained here. "
        "Definitions: `mobilellm/course/ablations.py`; runs: `data/results/`."
    )
    if missing:
        note += f" Not run yet: {', '.join(missing)}."
    return "\n".join(rows) + note


def training_budget() -> str:
    """One paragraph: how long training everything afresh takes, from the wall times the cached runs
    recorded (each run once, however many ablations share it), and what is still missing."""
    from .experiments import cached_runs

    def is_long(name: str) -> bool:  # read from the cache by the notebooks, never retrained by FRESH=1
        return "-trend-" in name or name == "sharing-scarce"

    runs: dict[bool, dict] = {False: {}, True: {}}
    missing = set()
    for name, ab in ABLATIONS.items():
        found, absent = cached_runs(ab)
        runs[is_long(name)].update({str(r.path): r for r in found})
        missing.update((name, label, seed) for label, seed in absent)
    for path in runs[False]:
        runs[True].pop(path, None)

    def hours(rs, seed0=False) -> float:
        return sum(r.wall_time for r in rs.values() if r.seed == 0 or not seed0) / 3600

    times = json.loads(TIMES_FILE.read_text()) if TIMES_FILE.is_file() else {}
    cached = [t for name, t in times.items() if (NOTEBOOKS_DIR / f"{name}.ipynb").is_file() and not t.get("fresh")]
    text = ""
    if cached:
        text = (
            f"`make figures` with the committed results cache: {sum(t['seconds'] for t in cached) / 60:.1f} "
            f"minutes on 2 cores (the sum of the per-notebook times below, last measured "
            f"{max(t['date'] for t in cached)[:10]}). "
        )
    text += (
        f"`make figures FRESH=1` retrains the {len(runs[False])} runs the notebooks train: their recorded wall "
        f"times sum to {hours(runs[False]):.1f} hours on 2 cores ({hours(runs[False], True):.1f} hours for seed "
        f"0 alone, `make figures FRESH=1 SEEDS=1`), partly measured while other jobs shared the CPU. The budget "
        f"sweeps and the scarce-sharing test are read from the cache ({len(runs[True])} more runs, "
        f"{hours(runs[True]):.1f} hours recorded) and rerun with `python -m mobilellm ablation NAME --fresh`."
    )
    if missing:
        names = sorted({name for name, _, _ in missing})
        text += (
            f" {len(missing)} of their runs are not trained yet ({', '.join(names)}): the notebooks show what "
            "is cached, seed by seed, and `python -m mobilellm ablation NAME` trains the rest."
        )
    return text


def pte_latency_table(path: Path | None = None, report: dict | None = None) -> str:
    """The README's on-device latency table, from a ``bench --suite pte`` report (the committed 2-block
    one by default) or ``report``, one already read (``bench.merge_pte_reports``'s several runs)."""
    from .bench import PTE_BENCH_JSON

    if report is None:
        path = path or paths.RESULTS_DIR / PTE_BENCH_JSON
        if not path.is_file():
            return f"(no `{path.name}` yet: run the command in the notebook 11 section)"
        report = json.loads(path.read_text())
    pte = report["pte"][0]
    rows = {(v["name"], v["quant"]): v for v in pte["variants"]}
    quants = list(dict.fromkeys(v["quant"] for v in pte["variants"]))
    what = {
        "unshared": "unshared",
        "immediate": "immediate sharing (A A B B)",
        "repeat_all": "repeat-all-over (A B A B)",
        "deeper": "2× deeper, unshared",
        "executorch_llama": "ExecuTorch's `export_llama`, unshared weights",
        "optimum_executorch": "optimum-executorch, unshared weights",
        "llama_cpp": "llama.cpp, unshared weights as GGUF F32 / Q8_0 / Q4_0",
        "unshared_again": "control: our unshared program loaded a second time",
    }
    what = {k: label for k, label in what.items() if any((k, q) in rows for q in quants)}  # peers that ran
    out = [
        "| decode ms/token (x unshared) | " + " | ".join(f".pte {q}" for q in quants) + " | iPhone 13 (paper) |",
        "|---|" + "---|" * (len(quants) + 1),
    ]
    for key, label in what.items():
        cells = []
        for q in quants:
            v = rows.get((key, q))
            ms, r = (v or {}).get("ms_per_token"), (v or {}).get("latency_ratio_vs_unshared")
            cells.append("—" if ms is None else f"{ms:.2f}" + (f" ({r:.2f}×)" if r and key != "unshared" else ""))
        v0 = rows.get((key, quants[0]), {})
        paper = (
            "—"
            if v0.get("paper_ms") is None
            else f"{v0['paper_ms']}" + (f" ({v0['paper_ratio']:.2f}×)" if key != "unshared" else "")
        )
        out.append(f"| {label} | " + " | ".join(cells) + f" | {paper} |")
    runs = report.get("runs") or [{"quants": quants, "command": report.get("command"), "machine": report["machine"]}]

    def mb(q: str, v: dict) -> str:
        r = v.get("size_ratio_vs_fp32") if q != "fp32" else None
        return f"{q} {v['bytes'] / 1e6:.1f} MB" + (f" ({r:.2f}× fp32)" if r else "")

    sizes = [mb(q, v) for q in quants if (v := rows.get(("unshared", q))) and v.get("bytes")]
    size = f"Unshared program size: {', '.join(sizes)}. " if sizes else ""
    cost = pte["repeat_cost"]
    fits = "; ".join(
        f"{q} {b / 2**20:.1f} MiB ({'/'.join(pte['block_fits_in'][q]) or 'no cache'})"
        for q, b in pte["block_bytes"].items()
    )
    out.append("")
    out.append(
        "A re-run layer's cost as a fraction of a fresh one's, (shared − unshared) / (deeper − unshared): "
        + ", ".join(
            f"{q} {cost[q]['immediate']:.2f} (immediate), {cost[q]['repeat_all']:.2f} (repeat-all)" for q in quants
        )
        + f"; the paper's iPhone 13 figures give {pte['paper_repeat_cost']:.2f}. One block's weights: "
        + f"{fits}. {size}{pte['config']}, {pte['weights'].split(';')[0]} weights, {pte['new_tokens']} tokens "
        + f"after a {pte['prompt_len']}-token prompt, median of {pte['repeats']} interleaved rounds; "
        + f"{report['machine']['cpu']}, {report['machine']['cpus_available']} CPUs"
        + ("; " if len(runs) > 1 else " ")
        + "; ".join(
            ("" if len(runs) == 1 else f"{'/'.join(r['quants'])}: ")
            + f"(load {r['machine']['load_average'][0]:.1f} at the start, "
            + f"{(r['machine'].get('load_average_after') or [float('nan')])[0]:.1f} at the end), "
            + f"commit {str(r['machine']['git_commit'])[:7]}, `{r.get('command') or '?'}`"
            for r in runs
        )
        + "."
    )
    return "\n".join(out)


def _replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"the file lacks the markers {start} … {end}")
    return re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)


def _generated() -> dict[str, object]:
    """Each generated section's marker name and the function that writes it."""

    def pte_30() -> str:
        from .bench import pte_full_depth

        full = pte_full_depth(paths.RESULTS_DIR)
        return pte_latency_table(report=full) if full else "(no 30-block pte run committed yet)"

    def verdicts() -> str:
        from .claims import verdict_table

        return verdict_table()

    return {
        "notebook-map": notebook_map,
        "budget": training_budget,
        "verdicts": verdicts,
        "ablations": ablation_table,
        "workshop": workshop,
        "pte-latency": pte_latency_table,
        "pte-latency-30": pte_30,
    }


def update_readme() -> None:
    """Rewrite every generated section, wherever its markers are: the README and the book's other pages
    (``docs/``). The notebook map must be in the README."""
    files = [README, *(p for p in paths.DOCS.values() if p.is_file())]
    texts = {f: f.read_text() for f in files}
    if "<!-- notebook-map:start -->" not in texts[README]:
        raise ValueError(f"{README.name} lacks the markers <!-- notebook-map:start --> … <!-- notebook-map:end -->")
    for name, make in _generated().items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        holders = [f for f, t in texts.items() if start in t]
        if holders:
            body = make()
            for f in holders:
                texts[f] = _replace_between(texts[f], start, end, body)
    for f, text in texts.items():
        write_atomic(f, lambda t, text=text: t.write_text(text))
