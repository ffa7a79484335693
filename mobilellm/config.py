"""Model configuration: one dataclass, the released MobileLLM presets, and the teaching presets.

Every design choice of the paper is a field here, so an ablation is a change of one value:
``ffn_type`` (SwiGLU), ``n_layers``/``dim`` (deep and thin), ``share_embedding``, ``n_kv_heads``
(grouped-query attention) and ``layer_sharing`` (immediate block-wise sharing).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

FFN_TYPES = ("relu", "gelu", "swiglu")
LAYER_SHARING = ("none", "immediate", "repeat_all", "reverse")
INITS = ("normal", "fan_in")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a MobileLLM (a Llama-style decoder); validated on construction."""

    vocab_size: int = 32000
    dim: int = 576
    n_layers: int = 30  # stored blocks; layer sharing runs some of them more than once
    n_heads: int = 9
    n_kv_heads: int = 3
    ffn_hidden_dim: int = 1536
    ffn_type: str = "swiglu"
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    share_embedding: bool = True
    layer_sharing: str = "none"
    layer_repeats: int = 2
    # None: dim // n_heads, resolved on construction, so ``head_dim`` is always the value
    # (the released models all use 64)
    head_dim: int | None = None
    # "normal": N(0, init_std) everywhere, as the official code (fine at width >= 576).
    # "fan_in": N(0, 1/fan_in), embeddings N(0, 1/dim), residual outputs scaled by depth:
    # at teaching width (~48) the official 0.02 is far too small and flips ablations.
    init: str = "normal"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} ({value!r}) must be a positive integer")

        for name in (
            "vocab_size",
            "dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "ffn_hidden_dim",
            "max_seq_len",
            "layer_repeats",
        ):
            positive(name)
        if self.head_dim is not None:
            positive("head_dim")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads "
                f"({self.n_kv_heads}): each KV head serves a whole group of query heads"
            )
        if self.head_dim is None and self.dim % self.n_heads:
            raise ValueError(
                f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}), or set head_dim explicitly"
            )
        # Resolved once. Whether it was derived is remembered (not a field: equal configs stay equal),
        # so that ``replace(dim=…)`` derives it again and ``to_dict`` writes what was given.
        object.__setattr__(self, "_derived_head_dim", self.head_dim is None)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even: rotary embeddings rotate pairs")
        if self.ffn_type not in FFN_TYPES:
            raise ValueError(f"ffn_type ({self.ffn_type!r}) must be one of {', '.join(FFN_TYPES)}")
        if self.layer_sharing not in LAYER_SHARING:
            raise ValueError(f"layer_sharing ({self.layer_sharing!r}) must be one of {', '.join(LAYER_SHARING)}")
        if self.init not in INITS:
            raise ValueError(f"init ({self.init!r}) must be one of {', '.join(INITS)}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps ({self.norm_eps}) must be > 0")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta ({self.rope_theta}) must be > 0")
        if not self.init_std > 0:
            raise ValueError(f"init_std ({self.init_std}) must be > 0")

    @property
    def execution_order(self) -> tuple[int, ...]:
        """Which stored block runs at each step of the forward pass (A A B B … for immediate)."""
        blocks = list(range(self.n_layers))
        r = self.layer_repeats if self.layer_sharing != "none" else 1
        if self.layer_sharing in ("none", "repeat_all"):
            return tuple(blocks * r)
        if self.layer_sharing == "immediate":
            return tuple(b for b in blocks for _ in range(r))
        # reverse: forward, backward, forward, … (A B C C B A for two repeats)
        return tuple(b for i in range(r) for b in (blocks if i % 2 == 0 else blocks[::-1]))

    @property
    def n_executed_layers(self) -> int:
        """Blocks run per forward pass: the compute depth (stored blocks times repeats)."""
        return len(self.execution_order)

    def replace(self, **changes: object) -> ModelConfig:
        """A copy with some fields changed (and validated again); a derived ``head_dim`` is derived again."""
        if self._derived_head_dim:
            changes.setdefault("head_dim", None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-dict form, for JSON and checkpoints: the fields as given (a derived ``head_dim`` is
        None), so run keys and stored configs read the same as before it was resolved."""
        d = dataclasses.asdict(self)
        if self._derived_head_dim:
            d["head_dim"] = None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; valid fields: {sorted(names)}")
        return cls(**d)


def _released(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=32000,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn_hidden_dim=ffn,
        head_dim=64,
    )


_RELEASED = {
    "mobilellm-125m": _released(576, 30, 9, 3, 1536),
    "mobilellm-350m": _released(960, 32, 15, 5, 2560),
    "mobilellm-600m": _released(1152, 40, 18, 6, 3072),
    "mobilellm-1b": _released(1280, 54, 20, 5, 3584),
    "mobilellm-1.5b": _released(1600, 54, 25, 5, 4352),
}
_RELEASED["mobilellm-125m-ls"] = _RELEASED["mobilellm-125m"].replace(layer_sharing="immediate")
_RELEASED["mobilellm-350m-ls"] = _RELEASED["mobilellm-350m"].replace(layer_sharing="immediate")

# Teaching presets: the final MobileLLM recipe (SwiGLU, deep-thin, tied, GQA 2:1) at sizes a
# laptop trains in about a minute (micro, ~126k params, vocab 512) or a quarter of an hour (tiny,
# ~1M params, vocab 2048, for longer runs). The vocabularies are SentencePiece tokenizers trained
# on the embedded corpus; embeddings stay ~15-25% of the parameters, as at 125M.
_TEACHING = {
    "teach-micro": ModelConfig(
        vocab_size=512, dim=48, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden_dim=128, max_seq_len=128, init="fan_in"
    ),
    "teach-tiny": ModelConfig(
        vocab_size=2048, dim=96, n_layers=8, n_heads=4, n_kv_heads=2, ffn_hidden_dim=256, max_seq_len=256, init="fan_in"
    ),
}
_TEACHING["teach-micro-ls"] = _TEACHING["teach-micro"].replace(layer_sharing="immediate")

PRESETS: dict[str, ModelConfig] = {**_RELEASED, **_TEACHING}


def list_configs() -> list[str]:
    """Names accepted by ``get_config``: the released models, then the teaching presets."""
    return list(PRESETS)


def get_config(name: str) -> ModelConfig:
    """The preset called ``name`` (see ``list_configs``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; valid names: {', '.join(PRESETS)}") from None


@dataclass
class TrainConfig:
    """How to train: budget, optimizer, schedule, evaluation, checkpoints, hardware."""

    max_steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, over all processes and micro-steps
    seq_len: int | None = None  # None: the model's max_seq_len
    grad_accum: int = 1
    lr: float = 1e-2  # near-best at teaching scale; the paper used 2e-3 at 125M
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_windows: int = 64  # validation windows of seq_len tokens
    checkpoint_every: int | None = None  # None: at every evaluation (when training into a folder)
    device: str = "auto"
    compile: bool = False
    fsdp: bool = False  # under torchrun: shard with FSDP2 instead of replicating with DDP
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_windows"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} ({v!r}) must be a positive integer")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 1):
            raise ValueError(f"seq_len ({self.seq_len!r}) must be a positive integer (or None for the model's max)")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed ({self.seed!r}) must be an integer in [0, 2**63)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr ({self.lr}) must be a finite number > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio ({self.min_lr_ratio}) must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be >= 0")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        """Plain-dict form (for JSON)."""
        return dataclasses.asdict(self)
