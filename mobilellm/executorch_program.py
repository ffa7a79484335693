"""The on-device decoding program: a MobileLLM as an ExecuTorch ``.pte`` with a static KV cache.

What a phone app runs. The program's ``forward(tokens, input_pos)`` takes a chunk of token ids
(shape (1, T), any T up to the cache window) and the position of its first token, writes the
chunk's keys and values into caches held *inside the program* (mutable buffers, kept between
calls), and returns the logits of the chunk's last token, shape (1, vocab). So a prompt is one
call (prefill) and every new token is one more call (decode), as in ExecuTorch's own Llama export,
whose pieces this reuses: its cache layout (batch, position, kv head, head dim) and its two CPU
custom ops, ``llama::update_cache`` and ``llama::custom_sdpa`` (attention over the filled part of
the cache only, grouped-query heads included), ``to_edge_transform_and_lower`` with the XNNPACK
partitioners, torchao's ``Int8DynamicActivationIntxWeightConfig`` for the linears, and its 8-bit
per-row embedding quantizer (``quantized_decomposed::embedding_byte``).

What ExecuTorch's Llama has no notion of is MobileLLM's layer sharing: here the cache has one slot
per *executed* layer (a block that runs twice sees different inputs each time, so it needs two),
while the block's weights are stored once in the program.

Quantization modes: ``fp32``; ``int8`` — W8A8: int8 per-channel weights, int8 dynamic per-token
activations (ExecuTorch's ``8da8w``, the numbers of ``executorch_window.export_executorch``'s int8 path);
``8da4w`` — int8 dynamic activations, int4 weights in groups of ``group_size`` inputs, one scale
per group (XNNPACK wants inputs and groups in multiples of 32; ``group_size=0``: a scale per row). Both
quantized modes also quantize the output head the same way and the embedding table to 8 bits per row.
A tied table is then stored twice (an int8 lookup table, and the head packed into XNNPACK's own
weight layout): the runtime has no way for one buffer to serve both.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ._files import write_atomic
from ._quiet import native_stderr_silenced, quiet_libraries
from .formats import QUANT_MODES
from .model import MobileLLM, apply_rope

DEFAULT_GROUP_SIZE = 32
# Constant methods in the program, named as ExecuTorch's Llama runner reads them (plus ours).
_META_INT = (
    "get_max_seq_len",
    "get_max_context_len",
    "get_vocab_size",
    "get_n_layers",
    "get_bos_id",
    "get_stored_blocks",
    "get_group_size",
    "get_tokenizer_id",
)


def tokenizer_id(fingerprint: str) -> int:
    """A tokenizer's fingerprint as the program stores it: its first 60 bits, an int64 constant."""
    return int(fingerprint[:15], 16)


def _need_executorch() -> None:
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise ImportError(
            "ExecuTorch export needs executorch (which brings torchao): pip install 'executorch>=1.0'"
        ) from None


def _load_custom_ops() -> None:
    """Register ExecuTorch's LLM ops (cache update, SDPA) and quantized kernels, for export and runtime."""
    import executorch.kernels.quantized  # noqa: F401  (embedding_byte in the Python runtime)
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


class CachedDecoder(nn.Module):
    """A MobileLLM's blocks (stored once) with one static K/V cache per executed layer, batch 1.

    ``forward(tokens (1, T) int64, input_pos (1,) int64) -> logits (1, vocab)`` of the last token.
    """

    def __init__(self, model: MobileLLM, max_len: int) -> None:
        super().__init__()
        cfg = model.cfg
        self.cfg, self.max_len = cfg, max_len
        self.order = cfg.execution_order
        self.embed_tokens, self.layers, self.norm, self.lm_head = (
            model.embed_tokens,
            model.layers,
            model.norm,
            model.lm_head,
        )
        self.register_buffer("rope_cos", model.rope_cos[:max_len].clone(), persistent=False)
        self.register_buffer("rope_sin", model.rope_sin[:max_len].clone(), persistent=False)
        shape = (1, max_len, cfg.n_kv_heads, cfg.head_dim)  # ExecuTorch's custom-op layout: position before head
        for slot in range(len(self.order)):
            self.register_buffer(f"k_cache_{slot}", torch.zeros(shape))
            self.register_buffer(f"v_cache_{slot}", torch.zeros(shape))

    def _attention(
        self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: int, start: int
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = attn.q_proj(x).view(B, T, attn.n_heads, attn.head_dim)
        k = attn.k_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim)
        v = attn.v_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # cos: (T, 1, hd) for this layout
        k_cache, v_cache = getattr(self, f"k_cache_{slot}"), getattr(self, f"v_cache_{slot}")
        torch.ops.llama.update_cache(k, k_cache, start)
        torch.ops.llama.update_cache(v, v_cache, start)
        # Causal from start: query i sees cached positions 0 .. start + i, never the stale tail.
        out = torch.ops.llama.custom_sdpa(q, k_cache, v_cache, start, None, 0, True)
        return attn.o_proj(out.reshape(B, T, attn.n_heads * attn.head_dim))

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Run a chunk at positions input_pos[0] … +T-1, filling the caches; logits of its last token."""
        T = tokens.shape[1]
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + T <= self.max_len)
        cos = self.rope_cos.narrow(0, start, T)[:, None, :]
        sin = self.rope_sin.narrow(0, start, T)[:, None, :]
        x = self.embed_tokens(tokens)
        for slot, b in enumerate(self.order):
            block = self.layers[b]
            x = x + self._attention(block.self_attn, block.input_layernorm(x), cos, sin, slot, start)
            x = x + block.mlp(block.post_attention_layernorm(x))
        return self.lm_head(self.norm(x[:, -1, :]))


def check_group_size(model: MobileLLM, group_size: int) -> None:
    """8da4w on XNNPACK: every linear input a multiple of 32, groups a multiple of 32 tiling it (0: one per row)."""
    cfg = model.cfg
    dims = {"dim": cfg.dim, "n_heads * head_dim": cfg.n_heads * cfg.head_dim, "ffn_hidden_dim": cfg.ffn_hidden_dim}
    off = {k: v for k, v in dims.items() if v % 32}
    if off:
        raise ValueError(
            f"8da4w needs linear input sizes in multiples of 32 (XNNPACK's int4 kernels), but {off} "
            "are not: use --quant int8 for this model"
        )
    bad = {k: v for k, v in dims.items() if group_size and v % group_size}
    if group_size < 0 or group_size % 32 or bad:
        raise ValueError(
            f"group_size {group_size} must be 0 (one scale per row) or a multiple of 32 (XNNPACK) "
            f"that divides {bad or dims}: choose a multiple of 32 dividing {math.gcd(*dims.values())}"
        )


def pad_ffn(model: MobileLLM, multiple: int = 32) -> MobileLLM:
    """A copy of ``model`` whose SwiGLU hidden layer is zero-padded up to a multiple of ``multiple``: the same function.

    XNNPACK's int4 kernels (8da4w) want every linear's input size in multiples of 32; a trained model
    with, say, 88 hidden units gets 8 more whose gate and up rows are zero (silu(0) * 0 = 0) and whose
    down-projection columns are zero, so no output changes. ``dim`` and the heads cannot be padded so.
    """
    cfg = model.cfg
    if cfg.ffn_type != "swiglu":
        raise ValueError(f"pad_ffn pads a SwiGLU hidden layer, this model has {cfg.ffn_type!r}")
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple ({multiple!r}) must be a positive integer")
    hidden = -(-cfg.ffn_hidden_dim // multiple) * multiple
    padded = MobileLLM(cfg.replace(ffn_hidden_dim=hidden)).to(next(model.parameters()).dtype)
    state = model.state_dict()
    with torch.no_grad():
        for name, p in padded.state_dict().items():
            p.zero_()
            src = state[name]
            p[tuple(slice(0, d) for d in src.shape)] = src  # gate/up: the first rows, down: the first columns
    return padded.eval()


def quantize_decoder_(decoder: CachedDecoder, quant: str, group_size: int = DEFAULT_GROUP_SIZE) -> CachedDecoder:
    """Quantize in place as ExecuTorch's Llama export does: every linear (head too), then the table per row."""
    if quant == "fp32":
        return decoder
    with quiet_libraries(), native_stderr_silenced():  # the Llama example's tokenizer library announces itself
        from executorch.examples.models.llama.source_transformation.quantize import EmbeddingQuantHandler
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup

    weight_dtype, granularity = (
        (torch.int8, PerAxis(0))
        if quant == "int8"
        else (torch.int4, PerGroup(group_size) if group_size else PerAxis(0))
    )
    # A tied head is its own Parameter after this; the embedding keeps the fp32 table until below.
    quantize_(
        decoder,
        Int8DynamicActivationIntxWeightConfig(weight_dtype=weight_dtype, weight_granularity=granularity),
        filter_fn=lambda m, fqn: isinstance(m, nn.Linear),
    )
    holder = nn.Module()
    holder.embed_tokens = decoder.embed_tokens
    with contextlib.redirect_stdout(None):  # the handler prints one line per table
        holder = EmbeddingQuantHandler(holder, bitwidth=8, group_size=None).quantized_model()
    decoder.embed_tokens = holder.embed_tokens
    return decoder


def _metadata(
    model: MobileLLM, max_len: int, group_size: int, bos_id: int | None, tokenizer_fingerprint: str | None
) -> dict:
    cfg = model.cfg
    meta = {} if tokenizer_fingerprint is None else {"get_tokenizer_id": tokenizer_id(tokenizer_fingerprint)}
    return meta | {
        "get_max_seq_len": max_len,
        "get_max_context_len": max_len,
        "get_vocab_size": cfg.vocab_size,
        "get_n_layers": cfg.n_executed_layers,
        "get_stored_blocks": cfg.n_layers,
        "get_bos_id": -1 if bos_id is None else bos_id,
        "get_group_size": group_size,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }


def _check_export(model: MobileLLM, quant: str, max_len: int | None, group_size: int) -> int:
    """The cache window (``max_len`` or the model's), after checking the arguments of an export."""
    if quant not in QUANT_MODES:
        raise ValueError(f"quant {quant!r} is not one of {', '.join(QUANT_MODES)}")
    max_len = model.cfg.max_seq_len if max_len is None else max_len
    if not 2 <= max_len <= model.cfg.max_seq_len:
        raise ValueError(f"max_len ({max_len}) must be in [2, max_seq_len = {model.cfg.max_seq_len}]")
    if quant == "8da4w":
        check_group_size(model, group_size)
    _need_executorch()
    return max_len


def export_program(
    model: MobileLLM,
    path: str | os.PathLike,
    quant: str = "fp32",
    max_len: int | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    bos_id: int | None = None,
    tokenizer_fingerprint: str | None = None,
) -> Path:
    """Write ``model`` as a KV-cached ExecuTorch program (XNNPACK) with a cache window of ``max_len`` tokens.

    ``quant``: one of ``QUANT_MODES``. ``group_size``: 8da4w's weights per scale (a multiple of 32
    dividing the linears' input sizes, or 0 for one scale per output row). ``model`` is not changed.
    ``tokenizer_fingerprint`` (``Tokenizer.fingerprint``) is stored, so that a runner can refuse
    another tokenizer. Lowering a tiny model takes seconds to a minute, the 125M shape minutes: cache the file.
    """
    max_len = _check_export(model, quant, max_len, group_size)
    _load_custom_ops()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner,
        XnnpackPartitioner,
    )
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    with quiet_libraries():  # torchao's and torch's import-time warnings
        decoder = quantize_decoder_(CachedDecoder(model, max_len), quant, group_size).eval()
    example = (torch.zeros(1, 2, dtype=torch.long), torch.tensor([0], dtype=torch.long))
    # As ExecuTorch's Llama export: the chunk length is dynamic, the position a 1-element tensor.
    dynamic = ({1: torch.export.Dim("token_dim", max=max_len - 1)}, {0: 1})
    partitioners = (
        [XnnpackPartitioner()] if quant == "fp32" else [XnnpackDynamicallyQuantizedPartitioner(), XnnpackPartitioner()]
    )
    with torch.no_grad(), warnings.catch_warnings(), quiet_libraries(), native_stderr_silenced():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's pytree chatter
        # The caches start empty by design: no step reads a position before writing it.
        warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
        ep = torch.export.export(decoder, example, dynamic_shapes=dynamic, strict=False)
        ep = ep.run_decompositions({})  # torchao's tensor subclasses -> plain q/dq ops XNNPACK matches
        edge = to_edge_transform_and_lower(
            ep,
            partitioner=partitioners,
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods=_metadata(model, max_len, group_size, bos_id, tokenizer_fingerprint),
        )
        program = edge.to_executorch(
            ExecutorchBackendConfig(
                extract_delegate_segments=True,
                do_quant_fusion_and_const_prop=True,
                memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
                sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
            )
        )
    return write_atomic(path, lambda t: t.write_bytes(program.buffer))
