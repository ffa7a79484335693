"""What every suite shares: the settings, the default configs, the paper's latency, ratios, and models built alike."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass

import torch

from ...accounting import param_count
from ...config import ModelConfig, get_config
from ...formats import QUANT_MODES
from ...model import MobileLLM
from ..paper import IPHONE13_MS
from .names import (  # noqa: F401  (re-exported: every suite reads them here)
    ALL_SUITES,
    BIG_PARAMS,
    DEFAULT_CONFIGS,
    PTE_BENCH_JSON,
    PTE_FULL_BENCH_JSON,
    QUICK_CONFIGS,
    SCHEMA_VERSION,
    SUITES,
)

# The paper's on-device latency (iPhone 13, ExecuTorch, fp16): execute ms per token at 125M, keyed as
# the sharing and pte suites' variants (the numbers themselves live in paper.py).
PAPER_SHARING_MS = {
    "unshared": IPHONE13_MS["MobileLLM-125M"][2],
    "immediate": IPHONE13_MS["MobileLLM-LS-125M"][2],
    "deeper": IPHONE13_MS["60 layers, unshared"][2],
}
PAPER_SHARING = (
    f"iPhone 13, ExecuTorch fp16, 125M: {PAPER_SHARING_MS['unshared']} ms, LS "
    f"{PAPER_SHARING_MS['immediate']} ms, 60 layers {PAPER_SHARING_MS['deeper']} ms"
)
DEVICE = torch.device("cpu")


@dataclass(frozen=True)
class BenchSettings:
    """How hard to measure: repeats, warm-up, problem sizes (``quick`` shrinks them), compile on/off."""

    repeats: int = 10
    warmup: int = 2
    quick: bool = False
    compile: bool = True
    executorch: bool = True  # lower to .pte (slow: seconds to minutes a model) where the export helpers exist
    progress: bool = True
    pte_blocks: int | None = None  # the pte suite: the preset's width at this many stored blocks (None: as is)
    pte_quants: tuple[str, ...] = QUANT_MODES  # the pte suite's formats, lowered and timed in this order
    pte_programs: str | None = None  # the pte suite: keep lowered programs in this folder, reuse them from it
    pte_peers: bool = True  # the pte suite: time the peers' exports too (each lowers the unshared weights again)

    def __post_init__(self) -> None:
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats ({self.repeats!r}) must be a positive integer")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup ({self.warmup!r}) must be a non-negative integer")

    @classmethod
    def make(
        cls, quick: bool = False, repeats: int | None = None, compile: bool | None = None, progress: bool = True
    ) -> BenchSettings:
        """Defaults for a full run, or a smoke run (``quick``: 3 repeats, 1 warm-up, no compile, no .pte)."""
        return cls(
            repeats=repeats if repeats is not None else (3 if quick else 10),
            warmup=1 if quick else 2,
            quick=quick,
            compile=(not quick) if compile is None else compile,
            executorch=not quick,
            progress=progress,
        )

    def repeats_for(self, cfg: ModelConfig) -> int:
        """Fewer repeats for big models, whose runs are long and steady."""
        return min(self.repeats, 5) if is_big(cfg) else self.repeats


def is_big(cfg: ModelConfig) -> bool:
    """Whether a config is full-size (gets smaller batches and fewer repeats)."""
    return param_count(cfg)["total"] > BIG_PARAMS


def resolve(config: str | ModelConfig) -> tuple[str, ModelConfig]:
    """(name, config) from a preset name or a ModelConfig."""
    if isinstance(config, ModelConfig):
        return "custom", config
    return config, get_config(config)


# --- comparing ------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either side is missing or b is not positive."""
    if a is None or b is None or not b > 0 or not math.isfinite(a):
        return None
    return a / b


def versus(rows: list[dict], ref: dict, key: str, out: str, speedup: bool = False) -> None:
    """Set ``row[out]`` in every row: its ``key`` over ``ref``'s (``speedup``: ``ref``'s over its)."""
    for row in rows:
        mine, theirs = row.get(key), ref.get(key)
        row[out] = ratio(theirs, mine) if speedup else ratio(mine, theirs)


def row_of(rows: list[dict], name: str) -> dict | None:
    """The row called ``name`` (a suite result's ``variants``), or None when it was not measured."""
    return next((v for v in rows if v["name"] == name), None)


# --- building models -------------------------------------------------------------------------


def build(cfg: ModelConfig, seed: int = 0) -> MobileLLM:
    """A freshly initialised model (fp32, CPU, eval mode), seeded so that every run holds the same weights."""
    torch.manual_seed(seed)
    return MobileLLM(cfg).to(DEVICE).eval()


def twin(model: MobileLLM, cfg: ModelConfig) -> MobileLLM:
    """A model with ``cfg``'s execution order over ``model``'s very modules (no copy, no extra memory)."""
    if cfg.replace(layer_sharing="none", layer_repeats=2) != model.cfg.replace(layer_sharing="none", layer_repeats=2):
        raise ValueError("a twin may differ from its model only in layer sharing")
    with torch.device("meta"):  # an empty shell: its parameters are replaced by the model's below
        shell = MobileLLM(cfg)
    shell.embed_tokens, shell.layers, shell.norm, shell.lm_head = (
        model.embed_tokens,
        model.layers,
        model.norm,
        model.lm_head,
    )
    shell.rope_cos, shell.rope_sin = model.rope_cos, model.rope_sin
    return shell.eval()


def _hf_peer(model: MobileLLM):
    """The Llama twin of ``model``, or the reason there is none."""
    if importlib.util.find_spec("transformers") is None:
        return None, "transformers is not installed: pip install 'transformers>=4.48'"
    from ...export import to_transformers

    try:
        return to_transformers(model), None
    except ValueError as e:  # e.g. a ReLU model has no Llama equivalent
        return None, str(e)


def _tokens(cfg: ModelConfig, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))
