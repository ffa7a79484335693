"""Int8 post-training quantization: W8A8 written out by hand, the same through torchao, and what it costs.

The paper quantizes MobileLLM to W8A8 after training (8-bit weights, 8-bit *per-token*
activations) and loses under 0.5 points of zero-shot accuracy. The recipe here, plainly:

* weights, once: per output channel (one scale per row of ``W``), symmetric, ``s = max|w_row| / 127``,
  ``q = round(w / s)`` in [-127, 127] (-128 is left out so that ``-q`` never overflows);
* activations, at every call: the same per token (one scale per row of ``x``);
* the matmul in integers with int32 accumulation, ``acc = x_q @ W_q^T``, then one float multiply
  per output, ``y = acc * s_x * s_w`` — because both scales factor out of the dot product.

What stays in float, and why. Only the linear layers of the blocks are quantized by default. The
output head shares its weight with the embedding table (one tensor, two roles); quantizing only
``lm_head`` would give it a private int8 copy and break the tie (``torch.ao``'s ``quantize_dynamic``
does exactly that). With ``include_embedding=True`` the shared table is quantized *once*: its
per-row scales are the head's per-output-channel scales, so one int8 table with one scale per
token row serves both the lookup and the head, and the tie survives. Norms, rotary tables and
the attention softmax stay in float, as in every int8 LLM deployment.

``torchao_quantize`` does the same with torchao's tensor subclasses, for real use; on this CPU its
W8A8 is only faster than fp32 under ``torch.compile`` (eager it is slower: quantizing each
activation costs more than the int8 matmul saves at these sizes). ``quant_report`` measures a set
of quantized models against fp32: bytes on disk, validation perplexity, greedy-token agreement
and CPU latency.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._quiet import quiet_libraries

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

QMAX = 127  # symmetric int8: [-127, 127]


# --- the pieces, by hand ---------------------------------------------------------------------


def _quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = t.detach().float()
    # An all-zero row has max 0; any positive scale quantizes it to zeros exactly.
    scale = (t.abs().amax(dim=-1, keepdim=True) / QMAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(t / scale).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: (q int8 like ``w``, scale fp32 (rows, 1)), ``w ≈ q * scale``."""
    return _quantize_rows(w)


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per token (per row of the last dimension): (q int8, scale fp32 (…, 1))."""
    return _quantize_rows(x)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Back to float: ``q * scale``; the round trip is off by at most ``scale / 2`` per element."""
    return q.float() * scale


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 @ (K, M) int8 -> (N, M) int32, exactly, as int8 hardware accumulates."""
    if a.device.type == "cpu" and hasattr(torch, "_int_mm"):
        return torch._int_mm(a, b)
    # Elsewhere, float64 is exact: |sum| <= K * 127**2, far below 2**53.
    return (a.double() @ b.double()).to(torch.int32)


class QuantLinear(nn.Module):
    """A bias-optional Linear with int8 per-channel weights; W8A8 (int8 per-token activations) or weight-only."""

    def __init__(
        self,
        qweight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        quantize_activations: bool = True,
    ) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError(f"qweight must be a 2-D int8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
        if scale.shape != (qweight.shape[0], 1):
            raise ValueError(f"scale must have shape ({qweight.shape[0]}, 1), got {tuple(scale.shape)}")
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.quantize_activations = quantize_activations
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantize_activations: bool = True) -> QuantLinear:
        """Quantize an ``nn.Linear``'s weight per output channel."""
        q, s = quantize_weight(linear.weight)
        return cls(q, s, linear.bias, quantize_activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(…, in) -> (…, out)."""
        if not self.quantize_activations:
            y = F.linear(x.float(), dequantize(self.qweight, self.scale))
        else:
            xq, xs = quantize_activation(x.reshape(-1, self.in_features))
            acc = int8_matmul(xq, self.qweight.t())  # (N, out) int32
            # Both scales factor out of each dot product: one multiply per output.
            y = (acc.float() * xs * self.scale.t()).reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        mode = "W8A8" if self.quantize_activations else "W8 weight-only"
        return f"in_features={self.in_features}, out_features={self.out_features}, {mode}"


class QuantEmbedding(nn.Module):
    """An embedding table stored as int8 rows with one scale per row (per token)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (what ``MobileLLM.new_cache`` reads its device and dtype from)."""
        return dequantize(self.qweight, self.scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (…) -> vectors (…, dim); only the looked-up rows are dequantized."""
        return dequantize(self.qweight[ids], self.scale[ids])


def quantize_w8a8_(model: nn.Module, include_embedding: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` in ``model.layers`` by a W8A8 ``QuantLinear``, in place; return ``model``.

    ``include_embedding``: also store the embedding table in int8 (and, if tied, the head reuses
    the very same int8 table and scales, so the tie is kept). Weight-only int8 is a
    ``QuantLinear(..., quantize_activations=False)`` per layer, or ``torchao_quantize(model, "w8")``.
    """
    if not hasattr(model, "layers"):
        raise ValueError(f"{type(model).__name__} has no .layers: quantize_w8a8_ expects a MobileLLM")
    # Collect first: replacing children while iterating named_modules would skip some.
    targets = [(name, mod) for name, mod in model.layers.named_modules() if isinstance(mod, nn.Linear)]
    for name, lin in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.layers.get_submodule(parent_name) if parent_name else model.layers
        setattr(parent, child, QuantLinear.from_linear(lin))
    if include_embedding:
        tied = model.lm_head.weight is model.embed_tokens.weight
        q, s = quantize_weight(model.embed_tokens.weight)
        model.embed_tokens = QuantEmbedding(q, s)
        if tied:
            model.lm_head = QuantLinear(q, s)  # the same tensors
        else:
            model.lm_head = QuantLinear.from_linear(model.lm_head)
    return model


# --- the same through torchao ----------------------------------------------------------------

TORCHAO_MODES = ("w8a8", "w8")


def _in_blocks(module: nn.Module, fqn: str) -> bool:
    # lm_head is left out on purpose: torchao would swap its (tied) weight for a private int8 copy.
    return isinstance(module, nn.Linear) and fqn.startswith("layers.")


def torchao_quantize(model: nn.Module, mode: str = "w8a8") -> nn.Module:
    """A quantized deep copy through torchao: ``w8a8`` (int8 dynamic per-token activations) or ``w8``.

    Only the blocks' linears are quantized (embedding and tied head stay fp32, tied).
    """
    if mode not in TORCHAO_MODES:
        raise ValueError(f"mode {mode!r} is not one of {TORCHAO_MODES}")
    try:
        with quiet_libraries():
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ImportError("torchao_quantize needs torchao: pip install torchao") from None
    config = Int8DynamicActivationInt8WeightConfig() if mode == "w8a8" else Int8WeightOnlyConfig()
    q = copy.deepcopy(model).eval()
    quantize_(q, config, filter_fn=_in_blocks)
    return q


# --- measurements ----------------------------------------------------------------------------


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (shared tensors are written once)."""
    # torch.save rather than safetensors: torchao's int8 tensor subclasses only pickle.
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _prompts(tokens: np.ndarray, n: int, length: int) -> torch.Tensor:
    starts = np.linspace(0, len(tokens) - length - 1, n).astype(int)
    return torch.from_numpy(np.stack([np.asarray(tokens[s : s + length], dtype=np.int64) for s in starts]))


def quant_report(
    fp32_model: nn.Module,
    quantized_models: dict[str, nn.Module],
    val_tokens: np.ndarray | torch.Tensor,
    tokenizer: Tokenizer | None = None,
    *,
    seq_len: int | None = None,
    eval_tokens: int | None = 32_768,
    n_prompts: int = 4,
    prompt_len: int = 16,
    new_tokens: int = 32,
    latency_prompt_len: int = 64,
    decode_tokens: int = 16,
    repeats: int = 5,
    mc_accuracy: Callable[[nn.Module], float] | None = None,
) -> list[dict]:
    """One row per model (fp32 first): bytes, val perplexity, greedy agreement with fp32, CPU latency.

    ``bytes``: ``torch.save`` of the state dict. Perplexity: ``evaluate.perplexity`` over the first
    ``eval_tokens`` of ``val_tokens`` in windows of ``seq_len`` (default min(256, max_seq_len)).
    ``greedy_agreement``: ``n_prompts`` prompts of ``prompt_len`` validation tokens, ``new_tokens``
    greedy tokens each; the fraction equal to fp32's at the same position (after a first
    difference the contexts differ, so one near-tie early drags the rest along).
    ``token_agreement``: the same positions, but every model reads fp32's greedy text and only its
    next-token argmax is compared (no drift: the per-token effect of quantization). Latency: median over ``repeats``
    runs (``timing.cached_decode``, after one warm-up) of one prefill of ``latency_prompt_len`` tokens
    and of the time per cached decoding step over ``decode_tokens`` steps, batch 1, eager, the current
    thread count. ``mc_accuracy(model)``, if given, adds a multiple-choice accuracy.
    With a ``tokenizer``, ``sample`` is the first prompt's continuation as text.
    """
    from .evaluate import perplexity
    from .timing import cached_decode, median

    if isinstance(val_tokens, torch.Tensor):
        val_tokens = val_tokens.cpu().numpy()
    toks = np.asarray(val_tokens if eval_tokens is None else val_tokens[:eval_tokens])
    max_len = fp32_model.cfg.max_seq_len
    seq_len = seq_len or min(256, max_len)
    if prompt_len + new_tokens > max_len:
        raise ValueError(f"prompt_len ({prompt_len}) + new_tokens ({new_tokens}) exceeds max_seq_len ({max_len})")
    if decode_tokens >= max_len:
        raise ValueError(f"decode_tokens ({decode_tokens}) must be below max_seq_len ({max_len})")
    if len(toks) < max(seq_len, prompt_len) + 2:
        raise ValueError(f"val_tokens has {len(toks)} tokens: too few for seq_len {seq_len}")
    prefill_len = min(latency_prompt_len, max_len - decode_tokens)
    prompts = _prompts(np.asarray(val_tokens), n_prompts, prompt_len)
    lat_prompt = _prompts(np.asarray(val_tokens), 1, prefill_len)

    if "fp32" in quantized_models:
        raise ValueError("'fp32' names the reference row: give the quantized models other names")
    models = {"fp32": fp32_model, **quantized_models}
    base_bytes, reference, path, forced_ref = None, None, None, None
    rows = []
    for name, model in models.items():
        model.eval()
        with torch.inference_mode():
            cont = model.generate(prompts, new_tokens)[:, prompt_len:]
            if reference is None:
                reference = cont
                path = torch.cat([prompts, reference], dim=1)[:, :-1]  # fp32's greedy text
            forced = model(path)[:, prompt_len - 1 :].argmax(-1)
            if forced_ref is None:
                forced_ref = forced
        size = state_dict_bytes(model)
        base_bytes = base_bytes or size
        ppl = perplexity(model, toks, seq_len)
        runs = [cached_decode(model, lat_prompt, decode_tokens) for _ in range(repeats + 1)][1:]  # 1st: warm-up
        prefill_ms, decode_ms = (median([r[i] for r in runs]) * 1e3 for i in (0, 1))
        row = {
            "name": name,
            "bytes": size,
            "size_vs_fp32": size / base_bytes,
            "val_nll": ppl["nll"],
            "val_ppl": ppl["perplexity"],
            "greedy_agreement": (cont == reference).float().mean().item(),
            "token_agreement": (forced == forced_ref).float().mean().item(),
            "prefill_ms": prefill_ms,
            "prefill_tokens": prefill_len,
            "decode_ms_per_token": decode_ms,
            "threads": torch.get_num_threads(),
        }
        if mc_accuracy is not None:
            row["mc_accuracy"] = float(mc_accuracy(model))
        if tokenizer is not None:
            row["sample"] = tokenizer.decode(cont[0].tolist())
        rows.append(row)
    return rows
