"""Your MobileLLM: the decoder you build in notebook 01, one design choice added in each of 02–06.

Every piece is plain PyTorch you can read in a minute, and `einops` where heads are reshaped. The
parameter names are the package's (`embed_tokens`, `layers.0.self_attn.q_proj`, …), so
`MobileLLM(cfg).load_state_dict(MyLLM(cfg).state_dict())` holds your weights, and each notebook checks
that the two compute the same logits. The switches are the package's `ModelConfig` fields; which
notebook adds which is marked below. Edit this file freely: the exercises do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from mobilellm import MobileLLM, ModelConfig

# --- 01: the baseline's pieces ------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Divide each vector by its root mean square, then scale by a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's angle for each pair of coordinates: (max_len, head_dim)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)  # one frequency per pair
    angles = torch.outer(torch.arange(max_len).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # pair i is (coordinate i, coordinate i + head_dim/2)
    return angles.cos(), angles.sin()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of coordinates of queries or keys (…, T, head_dim) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Causal self-attention. 01: every query head has its own key/value head (MHA).
    05: with fewer key/value heads (GQA), each serves a group of query heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", d=self.head_dim)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", d=self.head_dim)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", d=self.head_dim)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        # 05: a key/value head per group of query heads (with n_kv_heads == n_heads, groups of one)
        group = self.n_heads // self.n_kv_heads
        k, v = repeat(k, "b h t d -> b (h g) t d", g=group), repeat(v, "b h t d -> b (h g) t d", g=group)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        T = x.shape[1]
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        out = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
        return self.o_proj(rearrange(out, "b h t d -> b t (h d)"))


class FeedForward(nn.Module):
    """01: FC → ReLU → FC. 02: SwiGLU, a gated unit of three matrices: down(silu(gate(x)) · up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.ffn_type == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.relu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm: add attention to the residual stream, then the feed-forward network."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


# --- the model: 01, with 03's shape, 04's tied embeddings and 06's sharing as switches -------------


def execution_order(n_blocks: int, sharing: str, repeats: int = 2) -> list[int]:
    """06: which stored block runs at each executed layer. With 3 blocks, twice: "none": 0 1 2;
    "immediate": 0 0 1 1 2 2; "repeat_all": 0 1 2 0 1 2; "reverse": 0 1 2 2 1 0 (then forward again)."""
    blocks = list(range(n_blocks))
    if sharing == "none":
        return blocks
    if sharing == "immediate":
        return [b for b in blocks for _ in range(repeats)]
    if sharing == "repeat_all":
        return blocks * repeats
    if sharing == "reverse":
        return [b for r in range(repeats) for b in (blocks if r % 2 == 0 else blocks[::-1])]
    raise ValueError(f"layer sharing {sharing!r}: use none, immediate, repeat_all or reverse")


class MyLLM(nn.Module):
    """Embed the tokens, run the blocks (03: as many and as wide as the config says) in their execution
    order (06), normalise, and project back to the vocabulary (04: with the embedding itself when tied)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.share_embedding:  # 04: one table, used at both ends
            self.lm_head.weight = self.embed_tokens.weight
        self.order = execution_order(cfg.n_layers, cfg.layer_sharing, cfg.layer_repeats)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        x = self.embed_tokens(ids)
        for b in self.order:
            x = self.layers[b](x, self.cos[:T], self.sin[:T])
        return self.lm_head(self.norm(x))


def build(cfg: ModelConfig, seed: int = 0) -> MyLLM:
    """Your model with the package's initial weights for ``seed``: the same start as the course's run of
    this config and seed, so the two can be compared step by step."""
    torch.manual_seed(seed)
    start = MobileLLM(cfg).state_dict()  # drawn first, exactly as the course's trainer draws it
    mine = MyLLM(cfg)
    mine.load_state_dict(start)
    return mine


def same_as_package(mine: MyLLM, ids: torch.Tensor) -> float:
    """The largest difference between your logits and the package's, holding your weights."""
    ref = MobileLLM(mine.cfg)
    ref.load_state_dict(mine.state_dict())
    with torch.no_grad():
        return float((mine(ids) - ref(ids)).abs().max())
