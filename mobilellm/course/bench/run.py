"""The whole bench run: the chosen suites, each on its configs, into one report."""

from __future__ import annotations

import gc
import os

from ...config import ModelConfig
from .common import ALL_SUITES, DEFAULT_CONFIGS, QUICK_CONFIGS, SCHEMA_VERSION, SUITES, BenchSettings, resolve
from .eager import bench_decode, bench_int8, bench_sharing, bench_train
from .machine import machine_info, matmul_gflops, memory_bandwidth
from .pte import bench_pte


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
