"""The report: text tables of a bench run, and its JSON written atomically."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from ..._files import write_atomic
from .common import SUITES

# --- printing --------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".1f", suffix: str = "") -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:{fmt}}{suffix}"


def table(rows: list[dict], columns: list[tuple[str, str | Callable[[dict], object], str]]) -> list[str]:
    """Rows as aligned text, indented two spaces: columns of (header, key or function of the row, format).

    A column formatted ``""`` holds text and is aligned left; numbers align right, a missing one shows "—".
    """

    def cell(row: dict, get, fmt: str) -> str:
        value = get(row) if callable(get) else row.get(get)
        return str(value) if fmt == "" else _f(value, fmt)

    body = [[cell(row, get, fmt) for _, get, fmt in columns] for row in rows]
    head = [h for h, _, _ in columns]
    widths = [max(map(len, col)) for col in zip(head, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return (
            "  "
            + "  ".join(
                c.ljust(w) if fmt == "" else c.rjust(w)
                for c, w, (_, _, fmt) in zip(cells, widths, columns, strict=True)
            ).rstrip()
        )

    return [line(head), *map(line, body)]


def _percent(key: str) -> Callable[[dict], float | None]:
    return lambda row: None if row.get(key) is None else 100 * row[key]


NAME = ("", "name", "")
COLUMNS = {
    "train": [
        NAME,
        ("tokens/s", "tokens_per_s", ".0f"),
        ("GFLOP/s", "gflops", ".2f"),
        ("% of matmul", _percent("fraction_of_matmul"), ".1f"),
        ("step ms", "step_ms", ".1f"),
    ],
    "decode": [
        NAME,
        ("prefill ms", "prefill_ms", ".2f"),
        ("tokens/s", "decode_tokens_per_s", ".1f"),
        ("ms/token", "decode_ms_per_token", ".2f"),
    ],
    "int8": [
        NAME,
        ("forward ms", "forward_ms", ".2f"),
        ("x fp32", "forward_speedup_vs_fp32", ".2f"),
        ("decode ms/tok", "decode_ms_per_token", ".2f"),
        ("x fp32", "decode_speedup_vs_fp32", ".2f"),
        ("size MB", "size_mb", ".1f"),
        ("x fp32", "size_ratio_vs_fp32", ".2f"),
    ],
    "sharing": [
        NAME,
        ("what", "what", ""),
        ("ms/token", "ms_per_token", ".2f"),
        ("x unshared", "latency_ratio_vs_unshared", ".3f"),
        ("paper", "paper_ratio", ".3f"),
    ],
    "pte": [
        NAME,
        ("quant", "quant", ""),
        ("ms/token", "ms_per_token", ".2f"),
        ("x unshared", "latency_ratio_vs_unshared", ".3f"),
        ("paper", "paper_ratio", ".3f"),
        ("eager ms", "eager_fp32_ms_per_token", ".2f"),
        ("MB", lambda row: row.get("bytes") and row["bytes"] / 1e6, ".2f"),
        ("x fp32", "size_ratio_vs_fp32", ".2f"),
    ],
}


# The line above each suite's table: what was measured, on what, how often (filled from the suite's result).
TITLES = {
    "train": "train {config} ({params:,} params), batch {batch} x {seq_len}, AdamW step, median of {repeats}",
    "decode": "decode {config} ({params:,} params), batch 1, prompt {prompt_len}, {new_tokens} new tokens greedy, "
    "median of {repeats}",
    "int8": "int8 {config} ({params:,} params): forward 1 x {forward_len}, decode {new_tokens} tokens, "
    "median of {repeats}",
    "sharing": "sharing {config}: cached decode at batch 1, prompt {prompt_len}, {new_tokens} tokens, "
    "median of {repeats}",
    "pte": "pte {config} ({weights}): KV-cached ExecuTorch programs, batch 1, prompt {prompt_len}, {new_tokens} "
    "tokens, median of {repeats}; 8da4w groups of {group_size_8da4w}",
}


def _notes(suite: str, r: dict) -> list[str]:
    """The lines below a suite's table: its comparisons and what was skipped."""
    out = []
    if suite == "train":
        out.append(
            f"ours/HF {_f(r['ratio_vs_hf'], '.2f', 'x')}   compiled/eager "
            f"{_f(r['ratio_compiled_vs_eager'], '.2f', 'x')}   compiled/HF "
            f"{_f(r['ratio_compiled_vs_hf'], '.2f', 'x')}"
            + (f"   (compile {r['compile_s']:.0f} s)" if r["compile_s"] else "")
        )
    elif suite == "decode":
        out.append(
            f"ours vs HF (>1: ours faster): prefill {_f(r['prefill_speedup_vs_hf'], '.2f', 'x')}, decode "
            f"{_f(r['decode_ratio_vs_hf'], '.2f', 'x')}; same tokens: {r['same_tokens']}"
        )
        out.append(
            f"bound: {r['weight_bytes_per_token'] / 1e6:.1f} MB of weights per token -> "
            f"{_f(r['ceiling_tokens_per_s'], '.0f')} tokens/s; ours at "
            f"{_f(r['fraction_of_ceiling'] and 100 * r['fraction_of_ceiling'], '.1f', '%')}"
        )
    elif suite == "int8":
        out.append("(x fp32: speed-up for times, fraction for size)")
        for v in r["variants"]:
            if v.get("compile_s"):
                out.append(f"{v['name']}: compiled in {v['compile_s']:.0f} s")
            if v.get("lower_s"):
                out.append(
                    f"{v['name']}: lowered in {v['lower_s']:.0f} s, loaded in {v['load_ms']:.0f} ms, "
                    f"max |logit - eager fp32| {v['max_abs_diff_vs_fp32']:.1e}"
                )
    elif suite == "sharing":
        out.append(f"immediate / repeat_all latency: {_f(r['immediate_vs_repeat_all'], '.3f')}  (paper: {r['paper']})")
    elif suite == "pte":
        caches = ", ".join(f"L{c['level']}{c['type'][0].lower()} {c['bytes'] // 1024} KiB" for c in r["cpu_caches"])
        blocks = ", ".join(
            f"{q} {b / 1024:.0f} KiB (fits {'/'.join(r['block_fits_in'][q]) or 'no cache'})"
            for q, b in r["block_bytes"].items()
        )
        out.append(f"one block: {blocks}; caches: {caches}")
        out.append(
            "a re-run layer's cost / a fresh layer's ((shared - unshared) / (deeper - unshared)): "
            + ", ".join(
                f"{q} immediate {_f(c['immediate'], '.2f')} repeat_all {_f(c['repeat_all'], '.2f')}"
                for q, c in r["repeat_cost"].items()
            )
            + f"; paper {_f(r['paper_repeat_cost'], '.2f')}"
        )
        for key, peer in (
            ("vs_executorch_llama", "ExecuTorch's Llama export"),
            ("vs_optimum_executorch", "optimum-executorch's export"),
            ("vs_llama_cpp", "llama.cpp (GGUF F32 / Q8_0 / Q4_0)"),
            ("vs_unshared_again", "the same program loaded again (the noise floor)"),
        ):
            if r.get(key):
                out.append(
                    f"ours vs {peer}, same weights (speed >1: ours faster, in k/n paired rounds; size: ours / "
                    "its bytes): "
                    + ", ".join(
                        f"{q} speed {_f(c['speed_ratio'], '.2f', 'x')} ({c.get('ours_faster_rounds', '?')}/"
                        f"{c.get('rounds', '?')}) size {_f(c['size_ratio'], '.2f')}"
                        for q, c in r[key].items()
                    )
                )
        calls = [
            v
            for v in r["variants"]
            if v.get("delegate_calls") is not None and v["name"] not in ("immediate", "repeat_all", "deeper")
        ]
        if calls:
            out.append(
                f"calls per token ({calls[0]['quant']}; XNNPACK subgraphs + the runtime's own kernels): "
                + ", ".join(
                    f"{v['name']} {v['delegate_calls']} + {v['kernel_calls']}"
                    for v in calls
                    if v["quant"] == calls[0]["quant"]
                )
            )
        loaded = [v for v in r["variants"] if v.get("resident_bytes") is not None]
        for q in dict.fromkeys(v["quant"] for v in loaded):
            out.append(
                f"memory taken by loading each {q} program and a first call, MiB (file size): "
                + ", ".join(
                    f"{v['name']} {v['resident_bytes'] / 2**20:.0f} ({v['bytes'] / 2**20:.0f})"
                    for v in loaded
                    if v["quant"] == q
                )
            )
        out.append(f"(paper: {r['paper']}; eager ms: our PyTorch fp32 cached decode of the same model)")
    out += [f"skipped {k}: {why}" for k, why in r.get("skipped", {}).items()]
    return ["  " + line for line in out]


def format_report(report: dict) -> str:
    """The report as plain-text tables, one per suite."""
    m = report["machine"]
    out = [
        f"machine: {m['cpu']} | {m['cpus_available']} CPUs, torch {m['torch']} with {m['torch_threads']} "
        f"threads | transformers {m['transformers']} | commit {m['git_commit']} | {m['date']} | "
        f"load {', '.join(f'{x:.1f}' for x in m['load_average'] or [])}"
    ]
    c = report["ceilings"]
    if "matmul" in c:
        out.append(f"ceiling: fp32 matmul {c['matmul']['n']}^2: {c['matmul']['gflops']:.1f} GFLOP/s")
    if "memory" in c:
        mem = c["memory"]
        out.append(
            f"ceiling: memory {mem['gbs']:.1f} GB/s (copy {mem['copy_gbs']:.1f}, gemv {mem['gemv_gbs']:.1f}; "
            f"{mem['mb']} MB)"
        )
    for suite in SUITES:
        for r in report.get(suite, []):
            out += ["", TITLES[suite].format(**r), *table(r["variants"], COLUMNS[suite]), *_notes(suite, r)]
    return "\n".join(out)


def _finite(x: object) -> object:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN: a missing figure is null
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def write_json(report: dict, path: str | os.PathLike) -> Path:
    """Write the report as strict JSON (non-finite numbers become null)."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--json {out} is a folder: give a file name, e.g. {out / 'bench.json'}")
    text = json.dumps(_finite(report), indent=1, allow_nan=False) + "\n"
    write_atomic(out, lambda t: t.write_text(text))
    return out
