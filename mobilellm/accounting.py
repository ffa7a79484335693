"""Counting on paper: parameters, FLOPs, memory and training cost, from a ModelConfig alone.

Each function here is checked in the tests against the real module (its parameters, its
measured FLOPs, its allocated KV cache), so the notebooks can trust them for the full-size models
without building them.
"""

from __future__ import annotations

import torch

from .config import ModelConfig

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "int8": 1, "int4": 0.5}


def _bytes(dtype: str | torch.dtype) -> float:
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_BYTES)}") from None


def block_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of one stored block, by part."""
    attn = cfg.dim * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)  # q, o and k, v
    ffn = (3 if cfg.ffn_type == "swiglu" else 2) * cfg.dim * cfg.ffn_hidden_dim
    return {"attention": attn, "ffn": ffn, "norms": 2 * cfg.dim}


def param_count(cfg: ModelConfig) -> dict[str, int]:
    """Stored parameters by part (``total`` counts a shared embedding once)."""
    blk = block_params(cfg)
    parts = {
        "embedding": cfg.vocab_size * cfg.dim,
        "lm_head": 0 if cfg.share_embedding else cfg.vocab_size * cfg.dim,
        "attention": cfg.n_layers * blk["attention"],
        "ffn": cfg.n_layers * blk["ffn"],
        "norms": cfg.n_layers * blk["norms"] + cfg.dim,
    }
    parts["total"] = sum(parts.values())
    return parts


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None, training: bool = False) -> int:
    """Forward FLOPs per token at context ``seq_len`` (default max_seq_len); x3 when training.

    2 FLOPs per multiply-add of every matrix that runs (executed blocks, so layer sharing costs
    compute but not parameters, and the output projection even when tied), plus attention's
    QK^T and AV over the full context (4 * seq_len * n_heads * hd per layer, as PaLM counts it).
    """
    L = cfg.max_seq_len if seq_len is None else seq_len
    blk = block_params(cfg)
    matmul = cfg.n_executed_layers * (blk["attention"] + blk["ffn"]) + cfg.dim * cfg.vocab_size
    attn = cfg.n_executed_layers * 4 * L * cfg.n_heads * cfg.head_dim
    fwd = 2 * matmul + attn
    return 3 * fwd if training else fwd


def weight_bytes(cfg: ModelConfig, dtype: str | torch.dtype = "fp32") -> float:
    """Bytes to store the weights in ``dtype``."""
    return param_count(cfg)["total"] * _bytes(dtype)


def kv_cache_bytes_per_token(cfg: ModelConfig, dtype: str | torch.dtype = "fp32") -> float:
    """KV-cache bytes one token of context costs (keys and values of every executed layer)."""
    return 2 * cfg.n_executed_layers * cfg.n_kv_heads * cfg.head_dim * _bytes(dtype)


def training_days(
    cfg: ModelConfig,
    tokens: float,
    n_gpus: int = 32,
    peak_tflops: float = 312.0,
    utilization: float = 0.4,
    seq_len: int | None = None,
) -> float:
    """Wall-clock days to train on ``tokens`` with ``n_gpus`` at ``utilization`` of peak.

    Defaults: A100 bf16 dense peak 312 TFLOP/s.
    """
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization ({utilization}) must be in (0, 1]")
    flops = flops_per_token(cfg, seq_len, training=True) * tokens
    return flops / (n_gpus * peak_tflops * 1e12 * utilization) / 86400
