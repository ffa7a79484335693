"""The MobileLLM model: a Llama-style decoder whose five design choices are config switches.

Module and parameter names follow the released checkpoints (``embed_tokens``,
``layers.N.self_attn.q_proj``, ``layers.N.mlp.gate_proj``, …) so that loading them is a rename of
the ``model.`` prefix and nothing else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: scale by 1/rms(x), then by a learned gain (no bias, no mean)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension (computed in fp32, as Llama does, for bf16 safety)."""
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(
    head_dim: int, max_len: int, theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of rotary embeddings, shape (max_len, head_dim), Llama's layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # the two halves of a head rotate together
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys (B, H, T, hd) by their positions' angles (cos/sin: (T, hd))."""
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of every executed layer, preallocated for ``max_len`` positions.

    One slot per *executed* layer, not per stored block: under layer sharing a block runs twice
    and sees different inputs each time, so it needs two slots. (The official code keys the cache
    by block and silently overwrites the first pass with the second.)
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in cfg.execution_order]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in cfg.execution_order]
        self.max_len = max_len
        self.pos = 0  # how many positions are filled

    def update(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values at the current position; return everything cached so far."""
        end = self.pos + k.shape[2]
        self.k[slot][:, :, self.pos : end] = k
        self.v[slot][:, :, self.pos : end] = v
        return self.k[slot][:, :, :end], self.v[slot][:, :, :end]


class Attention(nn.Module):
    """Causal self-attention with rotary embeddings; MHA, GQA or MQA by ``n_kv_heads``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, slot: int = 0
    ) -> torch.Tensor:
        """x: (B, T, dim) -> (B, T, dim); with a cache, x holds the positions after cache.pos."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(slot, k, v)
        # Grouped-query attention: each KV head serves n_heads // n_kv_heads query heads.
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        elif T == 1:  # one new token sees every cached position
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # a chunk after a prefix: query i sees keys up to past + i
            rows = torch.arange(T, device=x.device)[:, None] + past
            mask = rows >= torch.arange(past + T, device=x.device)[None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """FC -> activation -> FC (``relu``/``gelu``), or SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ffn_type = cfg.ffn_type
        if cfg.ffn_type == "swiglu":
            self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(…, dim) -> (…, dim)."""
        if self.ffn_type == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        act = F.relu if self.ffn_type == "relu" else F.gelu
        return self.down_proj(act(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, slot: int = 0
    ) -> torch.Tensor:
        """(B, T, dim) -> (B, T, dim)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, slot)
        return x + self.mlp(self.post_attention_layernorm(x))


class MobileLLM(nn.Module):
    """Decoder-only language model: embed, run blocks in ``cfg.execution_order``, norm, project."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.share_embedding:
            # One tensor, two roles: the output projection *is* the embedding table.
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise weights by ``cfg.init`` (see ModelConfig); norms start at one."""
        cfg = self.cfg
        if self.embed_tokens.weight.is_meta:
            return
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.fill_(1.0)
            elif cfg.init == "normal":
                p.normal_(0.0, cfg.init_std)
            elif name == "embed_tokens.weight" or name == "lm_head.weight":
                p.normal_(0.0, cfg.dim**-0.5)
            else:
                std = p.shape[1] ** -0.5  # fan-in of an nn.Linear weight (out, in)
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    # Each executed layer adds to the residual stream; keep its sum O(1).
                    std /= math.sqrt(2 * cfg.n_executed_layers)
                p.normal_(0.0, std)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache on this model's device and dtype."""
        p = self.embed_tokens.weight
        return KVCache(self.cfg, batch_size, max_len or self.cfg.max_seq_len, p.device, p.dtype)

    def _check_input(self, input_ids: torch.Tensor, start: int, limit: int) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        T = input_ids.shape[1]
        if start + T > limit:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the limit {limit} "
                f"(max_seq_len {self.cfg.max_seq_len}): shorten the input"
            )
        if input_ids.numel() and not torch.compiler.is_compiling():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.cfg.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.cfg.vocab_size})")

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab). With a cache, continue after ``cache.pos``."""
        start = cache.pos if cache is not None else 0
        self._check_input(input_ids, start, cache.max_len if cache is not None else self.cfg.max_seq_len)
        T = input_ids.shape[1]
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        x = self.embed_tokens(input_ids)
        for slot, block in enumerate(self.cfg.execution_order):
            x = self.layers[block](x, cos, sin, cache, slot)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    @torch.no_grad()  # decoding never trains: no autograd graph per step (as transformers' generate)
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Prompt (B, T) -> prompt and continuation (B, T + n); KV-cached; temperature 0 is greedy.

        After a row emits ``eos_id`` it is padded with ``eos_id``; decoding stops early once every
        row has finished.
        """
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        self._check_input(input_ids, 0, self.cfg.max_seq_len)
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("the prompt is empty: give at least one token (e.g. the BOS id)")
        if T + max_new_tokens > self.cfg.max_seq_len:
            raise ValueError(
                f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                f"({self.cfg.max_seq_len}): shorten the prompt or ask for fewer tokens"
            )
        cache = self.new_cache(B, T + max_new_tokens)
        out = [input_ids]
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        logits = self(input_ids, cache)[:, -1]
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out.append(nxt[:, None])
            if i + 1 == max_new_tokens or (eos_id is not None and bool(done.all())):
                break
            logits = self(nxt[:, None], cache)[:, -1]
        return torch.cat(out, dim=1)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """One-line errors for impossible generation settings (shared by every decode loop)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature ({temperature}) must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k ({top_k}) must be >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p ({top_p}) must be in (0, 1]")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from (B, vocab) logits: argmax at temperature 0, else sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
