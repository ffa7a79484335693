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

import importlib

from ...formats import QUANT_MODES
from .names import ALL_SUITES, PTE_BENCH_JSON, PTE_FULL_BENCH_JSON, SUITES

# Everything else is imported on first use (PEP 562), so that listing the suites imports no torch.
_LAZY = {
    "BenchSettings": "common",
    "PAPER_SHARING": "common",
    "PAPER_SHARING_MS": "common",
    "bench_decode": "eager",
    "bench_int8": "eager",
    "bench_pte": "pte",
    "bench_sharing": "eager",
    "bench_train": "eager",
    "block_bytes": "pte",
    "build": "common",
    "cpu_caches": "pte",
    "format_report": "report",
    "is_big": "common",
    "lowered": "pte",
    "machine_info": "machine",
    "merge_pte_reports": "pte",
    "program_fingerprint": "pte",
    "pte_full_depth": "pte",
    "pte_group_size": "pte",
    "ratio": "common",
    "repeat_cost": "pte",
    "resident_bytes": "pte",
    "row_of": "common",
    "run_bench": "run",
    "sharing_variants": "eager",
    "twin": "common",
    "write_json": "report",
}

__all__ = [
    "ALL_SUITES",
    "PAPER_SHARING",
    "PAPER_SHARING_MS",
    "PTE_BENCH_JSON",
    "PTE_FULL_BENCH_JSON",
    "QUANT_MODES",
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


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
