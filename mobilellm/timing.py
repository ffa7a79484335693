"""Timing on a shared machine: rivals measured in turns, medians of repeats, and the cached-decode timer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def wall(fn: Callable[[], object]) -> Callable[[], float]:
    """A timer for ``fn``: calling it runs ``fn`` once and returns the seconds it took."""

    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return timed


def _bar(total: int, desc: str, progress: bool):
    from ._tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not progress)


def measure(
    timers: dict[str, Callable[[], float]], repeats: int, warmup: int = 1, desc: str = "", progress: bool = False
) -> dict[str, list[float]]:
    """Seconds per run of each timer, ``repeats`` rounds after ``warmup`` rounds.

    The timers take turns within each round and the order rotates from round to round, so a
    slow spell of the machine (another process, frequency scaling) lands on all of them alike.
    """
    names = list(timers)
    times: dict[str, list[float]] = {n: [] for n in names}
    with _bar((warmup + repeats) * len(names), desc, progress) as bar:
        for r in range(warmup + repeats):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                t = timers[n]()
                if r >= warmup:
                    times[n].append(t)
                bar.update()
    return times


def median(xs: list[float]) -> float:
    """The median (of run times)."""
    return statistics.median(xs)


@torch.no_grad()
def cached_decode(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """One greedy decode with a KV cache: (seconds of the prefill of ``prompt``, seconds per new token)."""
    cache = model.new_cache(prompt.shape[0], prompt.shape[1] + new_tokens)
    start = time.perf_counter()
    logits = model(prompt, cache)[:, -1]
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits = model(logits.argmax(-1, keepdim=True), cache)[:, -1]
    return prefill, (time.perf_counter() - start) / new_tokens if new_tokens else float("nan")


def decode_timer(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> Callable[[], float]:
    """A timer of cached greedy decoding for ``measure``: seconds per generated token (the prefill untimed)."""
    return lambda: cached_decode(model, prompt, new_tokens)[1]
