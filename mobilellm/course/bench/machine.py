"""The machine: its CPU, its fp32 matmul rate and memory bandwidth (the ceilings a run is read against)."""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import math
import os
import platform
from pathlib import Path

import torch

from ...timing import measure, median, wall
from ..experiments import provenance
from ..settings import Settings
from .common import DEVICE, BenchSettings

# --- the machine -----------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where and with what the numbers were measured (including the load, to judge how quiet it was)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "torchao": _version("torchao"),
        "executorch": _version("executorch"),
        "git_commit": provenance(Settings())["commit"] or None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(DEVICE),
    }


def matmul_gflops(s: BenchSettings) -> dict:
    """The fp32 matmul rate of a large square product: the ceiling for training's GFLOP/s."""
    n = 512 if s.quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = measure({"matmul": wall(lambda: a @ b)}, s.repeats, s.warmup, "matmul", s.progress)["matmul"]
    return {"n": n, "gflops": 2 * n**3 / median(t) / 1e9, "ms": median(t) * 1e3}


def memory_bandwidth(s: BenchSettings) -> dict:
    """Memory bandwidth (GB/s) by a large copy (read + write counted) and a large matrix-vector product.

    Cached decoding is a chain of matrix-vector products that stream every weight from memory once
    per token, so the GEMV figure is the one its pattern matches; the bound uses the larger of the two.
    """
    mb = 32 if s.quick else 256
    n = mb * 2**20 // 4
    src, dst = torch.randn(n), torch.empty(n)
    side = int(math.sqrt(n))
    w, x = src[: side * side].view(side, side), torch.randn(side)
    t = measure(
        {"copy": wall(lambda: dst.copy_(src)), "gemv": wall(lambda: w @ x)},
        s.repeats,
        s.warmup,
        "bandwidth",
        s.progress,
    )
    copy_gbs = 2 * n * 4 / median(t["copy"]) / 1e9
    gemv_gbs = side * side * 4 / median(t["gemv"]) / 1e9
    return {"mb": mb, "copy_gbs": copy_gbs, "gemv_gbs": gemv_gbs, "gbs": max(copy_gbs, gemv_gbs)}
