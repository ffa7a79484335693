"""Benchmarks: training and decoding speed, int8, and layer sharing, each beside a peer in the same run.

``python -m mobilellm bench`` runs four suites and writes one JSON report:

- ``train``: tokens/s and achieved GFLOP/s of a full AdamW step, ours (eager and compiled) vs
  ``transformers.LlamaForCausalLM`` holding the same weights, against the machine's fp32 matmul rate;
- ``decode``: batch-1 prefill latency and cached decode tokens/s, ``MobileLLM.generate`` vs Hugging
  Face ``generate`` on the same weights, against the memory-bandwidth bound (weights read per token);
- ``int8``: fp32 vs torchao int8 (W8A8, weight-only) vs ExecuTorch ``.pte``: latency and size;
- ``sharing``: per-token decode latency of a layer-shared model vs its unshared twin (the same
  stored blocks) vs a model twice as deep — the paper's iPhone table (+2.6% vs +86%);
- ``pte``: the same table in the mobile runtime: KV-cached ExecuTorch programs (fp32, int8, 8da4w)
  of the unshared, immediate, repeat-all and twice-as-deep models, random weights, with the bytes
  of one block in each format beside this CPU's cache sizes, and the memory each program holds (not in
  ``all``: 12 lowerings and the peers', hours at the 125M's full depth on 2 cores; run it as ``--suite
  pte``, with ``--pte-programs`` to keep what it lowered).

Every figure is the median of repeated runs after warm-up. Whatever is compared is measured in
the same run, interleaved round by round with the order rotated, so a change in the machine's load
hits every side alike; comparisons are reported as ratios. Absolute times vary on shared machines:
quote the ratios. Everything runs on the CPU in float32, the reference path.
"""

from __future__ import annotations

import gc
import os

from ...config import ModelConfig
from .common import (
    ALL_SUITES,
    DEFAULT_CONFIGS,
    PAPER_SHARING,
    PAPER_SHARING_MS,
    PTE_BENCH_JSON,
    PTE_FULL_BENCH_JSON,
    PTE_QUANTS,
    QUICK_CONFIGS,
    SCHEMA_VERSION,
    SUITES,
    BenchSettings,
    build,
    is_big,
    ratio,
    resolve,
    row_of,
    twin,
)
from .eager import bench_decode, bench_int8, bench_sharing, bench_train, sharing_variants
from .machine import machine_info, matmul_gflops, memory_bandwidth
from .pte import (
    bench_pte,
    block_bytes,
    cpu_caches,
    lowered,
    merge_pte_reports,
    program_fingerprint,
    pte_full_depth,
    pte_group_size,
    repeat_cost,
    resident_bytes,
)
from .report import format_report, write_json

__all__ = [
    "ALL_SUITES",
    "PAPER_SHARING",
    "PAPER_SHARING_MS",
    "PTE_BENCH_JSON",
    "PTE_FULL_BENCH_JSON",
    "PTE_QUANTS",
    "SUITES",
    "BenchSettings",
    "bench_decode",
    "bench_int8",
    "bench_pte",
    "bench_sharing",
    "bench_train",
    "block_bytes",
    "build",
    "cpu_caches",
    "format_report",
    "is_big",
    "lowered",
    "machine_info",
    "merge_pte_reports",
    "program_fingerprint",
    "pte_full_depth",
    "pte_group_size",
    "ratio",
    "repeat_cost",
    "resident_bytes",
    "row_of",
    "run_bench",
    "sharing_variants",
    "twin",
    "write_json",
]

# --- the whole run ---------------------------------------------------------------------------


def run_bench(
    suites: list[str] | tuple[str, ...] = ALL_SUITES,
    configs: list[str | ModelConfig] | None = None,
    settings: BenchSettings | None = None,
) -> dict:
    """Run the chosen suites (each on its default configs, or on ``configs``) and return the report."""
    s = settings or BenchSettings.make()
    suites = list(ALL_SUITES) if "all" in suites else list(suites)
    unknown = [x for x in suites if x not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r}; valid: {', '.join(SUITES)}, all")
    for c in configs or []:
        resolve(c)  # an unknown name fails now, not after minutes of measuring
    report: dict = {
        "schema": SCHEMA_VERSION,
        "machine": machine_info(),
        "settings": {
            "suites": suites,
            "repeats": s.repeats,
            "warmup": s.warmup,
            "quick": s.quick,
            "compile": s.compile,
            "executorch": s.executorch,
        },
        "ceilings": {},
    }
    defaults = QUICK_CONFIGS if s.quick else DEFAULT_CONFIGS

    def chosen(suite: str) -> list[str | ModelConfig]:
        return list(configs) if configs else list(defaults[suite])

    if "train" in suites:
        report["ceilings"]["matmul"] = matmul_gflops(s)
    if {"decode", "sharing", "int8"} & set(suites):
        report["ceilings"]["memory"] = memory_bandwidth(s)
    runners = {
        "train": lambda c: bench_train(c, s, report["ceilings"]["matmul"]),
        "decode": lambda c: bench_decode(c, s, report["ceilings"]["memory"]),
        "int8": lambda c: bench_int8(c, s),
        "sharing": lambda c: bench_sharing(c, s),
        "pte": lambda c: bench_pte(
            c, s, s.pte_quants, n_layers=s.pte_blocks, peer=s.pte_peers, programs=s.pte_programs
        ),
    }
    for suite in (x for x in SUITES if x in suites):
        report[suite] = []
        for c in chosen(suite):
            report[suite].append(runners[suite](c))
            gc.collect()  # closures keep the last models alive in cycles: free them before the next
    report["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report
