"""How the course's runner is set: quick or full, how many seeds, cached or fresh, which device.

One frozen dataclass, passed to the runner explicitly (``experiments.run_ablation(ab, settings)``,
``python -m mobilellm ablation NAME --quick --seeds 1 --fresh --device cuda``). Environment
variables are only the outermost way in — for ``make`` and for notebook kernels, which receive
nothing else from the process that starts them — and ``Settings.from_env`` is the one place that
reads them; ``Settings.to_env`` writes them for a child process. Importing the package reads and
changes nothing.

    MOBILELLM_QUICK=1     quick: a few steps per run, one seed, output to a temp folder (tests, CI)
    MOBILELLM_SEEDS=N     at most the first N seeds of each ablation
    FRESH=1               retrain and re-measure what the cache holds (once per session)
    MOBILELLM_FRESH_SINCE results written after this time count as fresh (one session, many kernels)
    MOBILELLM_DEVICE=cuda the device runs train on (default cpu)
    MOBILELLM_HEADLESS=1  no progress bars (notebooks executed unattended)
    MOBILELLM_COMMAND     the command recorded in each result's provenance
    MOBILELLM_CACHE       where prepared tokens are cached (default: the checkout's data/cache;
                          read by ``paths.cache_dir``)
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

_PROCESS_START = time.time()


def _flag(value: str | None) -> bool:
    return (value or "") not in ("", "0")


@dataclass(frozen=True)
class Settings:
    """How to run: see the module docstring for each field's environment variable."""

    quick: bool = False
    seeds: int | None = None  # None: every seed of each ablation
    fresh: bool = False
    fresh_since: float = _PROCESS_START
    device: str = "cpu"
    progress: bool = True
    command: str | None = None  # None: this process's command line

    def __post_init__(self) -> None:
        if self.seeds is not None and (
            not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 1
        ):
            raise ValueError(f"seeds ({self.seeds!r}) must be a positive integer, e.g. SEEDS=1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment asks for (``os.environ`` unless ``env`` is given)."""
        env = os.environ if env is None else env
        seeds = env.get("MOBILELLM_SEEDS", "")
        if seeds and (not seeds.isdigit() or int(seeds) < 1):
            raise ValueError(f"MOBILELLM_SEEDS ({seeds!r}) must be a positive integer, e.g. SEEDS=1")
        return cls(
            quick=_flag(env.get("MOBILELLM_QUICK")),
            seeds=int(seeds) if seeds else None,
            fresh=_flag(env.get("FRESH")),
            fresh_since=float(env.get("MOBILELLM_FRESH_SINCE") or _PROCESS_START),
            device=env.get("MOBILELLM_DEVICE") or "cpu",
            progress=not _flag(env.get("MOBILELLM_HEADLESS")),
            command=env.get("MOBILELLM_COMMAND") or None,
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that make ``from_env`` in a child process return these settings."""
        env = {
            "MOBILELLM_QUICK": "1" if self.quick else "",
            "MOBILELLM_SEEDS": str(self.seeds or ""),
            "FRESH": "1" if self.fresh else "",
            "MOBILELLM_FRESH_SINCE": repr(self.fresh_since),
            "MOBILELLM_DEVICE": self.device,
            "MOBILELLM_HEADLESS": "" if self.progress else "1",
        }
        if self.command:
            env["MOBILELLM_COMMAND"] = self.command
        return env

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)
