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
import io
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from ._common import one_line
from ._files import write_atomic
from ._quiet import native_stderr_silenced, quiet_libraries
from .model import MobileLLM, apply_rope, check_sampling, sample_next

QUANT_MODES = ("fp32", "int8", "8da4w")
DEFAULT_GROUP_SIZE = 32
# Constant methods in the program, named as ExecuTorch's Llama runner reads them (plus ours).
_META_INT = ("get_max_seq_len", "get_max_context_len", "get_vocab_size", "get_n_layers", "get_bos_id",
             "get_stored_blocks", "get_group_size")


def _need_executorch() -> None:
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise ImportError("ExecuTorch export needs executorch (which brings torchao): "
                          "pip install 'executorch>=1.0'") from None


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
        self.embed_tokens, self.layers, self.norm, self.lm_head = (model.embed_tokens, model.layers,
                                                                   model.norm, model.lm_head)
        self.register_buffer("rope_cos", model.rope_cos[:max_len].clone(), persistent=False)
        self.register_buffer("rope_sin", model.rope_sin[:max_len].clone(), persistent=False)
        shape = (1, max_len, cfg.n_kv_heads, cfg.head_dim)  # ExecuTorch's custom-op layout: position before head
        for slot in range(len(self.order)):
            self.register_buffer(f"k_cache_{slot}", torch.zeros(shape))
            self.register_buffer(f"v_cache_{slot}", torch.zeros(shape))

    def _attention(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   slot: int, start: int) -> torch.Tensor:
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
        raise ValueError(f"8da4w needs linear input sizes in multiples of 32 (XNNPACK's int4 kernels), but {off} "
                         "are not: use --quant int8 for this model")
    bad = {k: v for k, v in dims.items() if group_size and v % group_size}
    if group_size < 0 or group_size % 32 or bad:
        raise ValueError(f"group_size {group_size} must be 0 (one scale per row) or a multiple of 32 (XNNPACK) "
                         f"that divides {bad or dims}: choose a multiple of 32 dividing {math.gcd(*dims.values())}")


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

    weight_dtype, granularity = (torch.int8, PerAxis(0)) if quant == "int8" else (
        torch.int4, PerGroup(group_size) if group_size else PerAxis(0))
    # A tied head is its own Parameter after this; the embedding keeps the fp32 table until below.
    quantize_(decoder, Int8DynamicActivationIntxWeightConfig(weight_dtype=weight_dtype,
                                                             weight_granularity=granularity),
              filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    holder = nn.Module()
    holder.embed_tokens = decoder.embed_tokens
    with contextlib.redirect_stdout(None):  # the handler prints one line per table
        holder = EmbeddingQuantHandler(holder, bitwidth=8, group_size=None).quantized_model()
    decoder.embed_tokens = holder.embed_tokens
    return decoder


def _metadata(model: MobileLLM, max_len: int, group_size: int, bos_id: int | None) -> dict:
    cfg = model.cfg
    return {"get_max_seq_len": max_len, "get_max_context_len": max_len, "get_vocab_size": cfg.vocab_size,
            "get_n_layers": cfg.n_executed_layers, "get_stored_blocks": cfg.n_layers,
            "get_bos_id": -1 if bos_id is None else bos_id, "get_group_size": group_size,
            "use_kv_cache": True, "use_sdpa_with_kv_cache": True, "enable_dynamic_shape": True}


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


def export_program(model: MobileLLM, path: str | os.PathLike, quant: str = "fp32", max_len: int | None = None,
                   group_size: int = DEFAULT_GROUP_SIZE, bos_id: int | None = None) -> Path:
    """Write ``model`` as a KV-cached ExecuTorch program (XNNPACK) with a cache window of ``max_len`` tokens.

    ``quant``: one of ``QUANT_MODES``. ``group_size``: 8da4w's weights per scale (a multiple of 32
    dividing the linears' input sizes, or 0 for one scale per output row). ``model`` is not changed.
    Lowering a tiny model takes seconds to a minute, the 125M shape minutes: cache the file.
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
    partitioners = [XnnpackPartitioner()] if quant == "fp32" else [XnnpackDynamicallyQuantizedPartitioner(),
                                                                   XnnpackPartitioner()]
    with torch.no_grad(), warnings.catch_warnings(), quiet_libraries(), native_stderr_silenced():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's pytree chatter
        # The caches start empty by design: no step reads a position before writing it.
        warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
        ep = torch.export.export(decoder, example, dynamic_shapes=dynamic, strict=False)
        ep = ep.run_decompositions({})  # torchao's tensor subclasses -> plain q/dq ops XNNPACK matches
        edge = to_edge_transform_and_lower(ep, partitioner=partitioners,
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                           constant_methods=_metadata(model, max_len, group_size, bos_id))
        program = edge.to_executorch(ExecutorchBackendConfig(
            extract_delegate_segments=True, do_quant_fusion_and_const_prop=True,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass()))
    return write_atomic(path, lambda t: t.write_bytes(program.buffer))


def tokenizer_beside(program: str | os.PathLike) -> Path:
    """Where a program's tokenizer is written: ``NAME.tokenizer.model`` beside ``NAME.pte``, so that two
    programs in one folder (or a program in a checkpoint's folder) never share or replace one."""
    p = Path(program)
    return p.with_name(p.stem + ".tokenizer.model")


def program_census(path: str | os.PathLike, method: str = "forward") -> dict:
    """What one call of a program's ``method`` executes, read from the file: its instructions, the calls
    into a backend (XNNPACK's compiled subgraphs) and the kernels the runtime runs itself, by operator.

    Two programs of the same weights that lower to the same delegated subgraphs differ only in these
    kernel calls (and what they move), so this is where to look when one decodes slower than the other.
    """
    from executorch.exir._serialize._program import deserialize_pte_binary  # (the runtime reads no census)

    program = deserialize_pte_binary(Path(path).read_bytes()).program
    plans = {p.name: p for p in program.execution_plan}
    if method not in plans:
        raise ValueError(f"{path} has no method {method!r} (it has {sorted(plans)})")
    plan = plans[method]
    kernels: dict[str, int] = {}
    delegate_calls = instructions = 0
    for chain in plan.chains:
        for ins in chain.instructions:
            instructions += 1
            kind = type(ins.instr_args).__name__
            if kind == "KernelCall":
                name = plan.operators[ins.instr_args.op_index].name
                kernels[name] = kernels.get(name, 0) + 1
            delegate_calls += kind == "DelegateCall"
    return {"instructions": instructions, "delegate_calls": delegate_calls,
            "kernel_calls": sum(kernels.values()), "kernels": dict(sorted(kernels.items()))}


# --- running it ------------------------------------------------------------------------------


class PteDecoder:
    """A loaded KV-cached program: ``step(ids, pos)`` runs a chunk; ``generate`` streams tokens."""

    def __init__(self, path: str | os.PathLike) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist: write it with `python -m mobilellm export --format pte`")
        _need_executorch()
        _load_custom_ops()
        from executorch.runtime import Runtime

        try:
            with native_stderr_silenced():
                self._program = Runtime.get().load_program(p)
        except Exception as e:  # the runtime raises RuntimeError or ValueError for garbage
            raise ValueError(f"{p} is not an ExecuTorch program ({one_line(e)})") from None
        names = set(self._program.method_names)
        if not {"forward", "get_max_seq_len", "get_vocab_size"} <= names:
            raise ValueError(f"{p} is not a KV-cached program from export_program (methods {sorted(names)}): "
                             "re-export it with `python -m mobilellm export --format pte`")
        self.path = p
        self.meta = {n: int(self._program.load_method(n).execute([])[0]) for n in _META_INT if n in names}
        self.max_len, self.vocab_size = self.meta["get_max_seq_len"], self.meta["get_vocab_size"]
        with native_stderr_silenced():
            self._forward = self._program.load_method("forward")
        # ours and export_llama's take the chunk's first position, shape (1,); optimum-executorch's
        # every position of the chunk, shape (T,) (its bound: the window minus one)
        self._positions = self._forward.metadata.input_tensor_meta(1).sizes()[0] > 1
        self.pos = 0  # positions filled in the program's caches

    def step(self, ids: torch.Tensor | Sequence[int], pos: int | None = None) -> torch.Tensor:
        """Logits (vocab,) after feeding ``ids`` (a chunk) at ``pos`` (default: after the last chunk; less rewinds)."""
        ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(list(ids), dtype=torch.long)
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be int64 (or int32), got {ids.dtype}")
        ids = ids.reshape(1, -1).long()
        pos = self.pos if pos is None else pos
        T = ids.shape[1]
        if T == 0:
            raise ValueError("empty chunk: give at least one token id")
        if pos > self.pos:
            raise ValueError(f"position {pos} skips positions {self.pos}..{pos - 1}, which hold no keys yet: "
                             f"continue at {self.pos} or start again at 0")
        if pos < 0 or pos + T > self.max_len:
            raise ValueError(f"positions {pos}..{pos + T - 1} do not fit the program's cache window of "
                             f"{self.max_len} tokens: shorten the prompt or export with a larger --max-len")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {self.vocab_size})")
        positions = torch.arange(pos, pos + T) if self._positions else torch.tensor([pos], dtype=torch.long)
        with native_stderr_silenced():  # XNNPACK probes the CPU (and says so on fd 2) on first execution
            logits = self._forward.execute((ids, positions))[0]
        self.pos = pos + T
        return logits.reshape(-1, logits.shape[-1])[-1].clone()  # the last token's (optimum's: every token's)

    def generate(self, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                 seed: int = 0, chunk: int | None = None) -> Iterator[int]:
        """Yield new token ids one by one: prefill the prompt (in chunks of ``chunk``), then decode.

        Greedy at temperature 0; stops after ``eos_id`` (which is yielded) or ``max_new_tokens``.
        """
        prompt = prompt if isinstance(prompt, torch.Tensor) else torch.as_tensor(list(prompt), dtype=torch.long)
        if prompt.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"prompt token ids must be int64 (or int32), got {prompt.dtype}")
        prompt = prompt.reshape(-1).long()
        n = prompt.numel()
        if n == 0:
            raise ValueError("the prompt is empty: give at least one token (e.g. the BOS id)")
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if n + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({n} tokens) + max_new_tokens ({max_new_tokens}) exceeds the program's "
                             f"cache window of {self.max_len}: shorten the prompt or ask for fewer tokens")
        chunk = chunk or self.max_len - 1
        for start in range(0, n, chunk):
            logits = self.step(prompt[start:start + chunk], start)
        gen = torch.Generator().manual_seed(seed)
        for i in range(max_new_tokens):
            nxt = int(sample_next(logits[None], temperature, top_k, top_p, gen)[0])
            yield nxt
            if nxt == eos_id or i + 1 == max_new_tokens:
                return
            logits = self.step([nxt])

    def next_token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (T, vocab): position t's prediction after ids[0..t], one decode step each."""
        return torch.stack([self.step(ids[t:t + 1], t) for t in range(ids.numel())])


def compare_programs(paths: dict[str, str | os.PathLike], windows: torch.Tensor, reference: str = "fp32") -> dict:
    """Per program: perplexity and top-1 next-token accuracy on ``windows`` (N, T), agreement with ``reference``.

    Each row runs through the decode path a phone runs (one token per call), not a prefill.
    """
    if reference not in paths:
        raise ValueError(f"reference {reference!r} is not among the programs {sorted(paths)}")
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must have shape (N, T >= 2), got {tuple(windows.shape)}")
    logits = {}
    for name, path in paths.items():
        dec = PteDecoder(path)
        logits[name] = torch.stack([dec.next_token_logits(row[:-1]) for row in windows])
    targets = windows[:, 1:]
    out = {}
    for name, lg in logits.items():
        nll = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), targets.reshape(-1))
        agree = (lg.argmax(-1) == logits[reference].argmax(-1)).float().mean()
        accuracy = (lg.argmax(-1) == targets).float().mean()  # top-1 next-token accuracy on the text
        out[name] = {"ppl": math.exp(nll.item()), "agreement": agree.item(), "accuracy": accuracy.item(),
                     "bytes": Path(paths[name]).stat().st_size}
    for name in out:
        out[name]["size_ratio"] = out[name]["bytes"] / out[reference]["bytes"]
    return out


# --- the peer: ExecuTorch's own Llama export of the same weights --------------------------------

# Our quant modes in ExecuTorch's Llama export: its ``qmode`` (``8da8w`` is in its quantizer but not
# in its config's list of modes, so it is set past the check) and its 8-bit per-row embedding.
_LLAMA_QMODE = {"fp32": None, "int8": "8da8w", "8da4w": "8da4w"}


def llama_checkpoint(model: MobileLLM) -> tuple[dict[str, torch.Tensor], dict]:
    """``model``'s weights in Meta's Llama layout and ExecuTorch's ``params.json``, for its Llama export.

    The blocks are stored as executed (a layer-shared model's repeats become copies: ExecuTorch's
    Llama has no sharing), the tied head is a copy of the table, and ``use_hf_rope`` keeps our
    rotate-half RoPE, so no q/k permutation is needed.
    """
    cfg = model.cfg
    if cfg.ffn_type != "swiglu":
        raise ValueError(f"ExecuTorch's Llama is a SwiGLU model, this one has {cfg.ffn_type!r}")
    sd = {"tok_embeddings.weight": model.embed_tokens.weight, "norm.weight": model.norm.weight,
          "output.weight": model.lm_head.weight}
    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
             "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    for i, b in enumerate(cfg.execution_order):
        block = model.layers[b]
        for meta, ours in names.items():
            sd[f"layers.{i}.{meta}.weight"] = block.get_submodule(ours).weight
    sd = {k: v.detach().to("cpu", torch.float32).clone() for k, v in sd.items()}
    params = {"dim": cfg.dim, "n_layers": cfg.n_executed_layers, "n_heads": cfg.n_heads,
              "n_kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_dim": cfg.ffn_hidden_dim,
              "vocab_size": cfg.vocab_size, "norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
              "use_hf_rope": True, "use_scaled_rope": False}
    return sd, params


def export_llama_peer(model: MobileLLM, path: str | os.PathLike, quant: str = "fp32", max_len: int | None = None,
                      group_size: int = DEFAULT_GROUP_SIZE) -> Path:
    """Write ``model`` through ExecuTorch's own Llama export (``export_llama``): KV cache, its SDPA op,
    XNNPACK (extended ops, so fp32 linears are delegated too), the same quant mode and 8-bit table.

    The program has the same ``forward(tokens, input_pos)`` as ours, so ``PteDecoder`` runs it.
    """
    import json
    import logging
    import tempfile

    max_len = _check_export(model, quant, max_len, group_size)
    with quiet_libraries(), native_stderr_silenced():  # its tokenizer library announces itself on fd 2
        from executorch.examples.models.llama.export_llama_lib import export_llama
        from executorch.extension.llm.export.config.llm_config import LlmConfig, ModelType

    sd, params = llama_checkpoint(model)
    out = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(sd, Path(tmp) / "checkpoint.pth")
        (Path(tmp) / "params.json").write_text(json.dumps(params))
        c = LlmConfig()
        c.base.model_class = ModelType.llama3
        c.base.checkpoint, c.base.params = str(Path(tmp) / "checkpoint.pth"), str(Path(tmp) / "params.json")
        c.model.use_kv_cache = c.model.use_sdpa_with_kv_cache = c.model.enable_dynamic_shape = True
        c.export.max_seq_length = c.export.max_context_length = max_len
        c.export.output_dir, c.export.output_name = tmp, str(Path(tmp) / "peer.pte")  # a .pte name is used as is
        c.backend.xnnpack.enabled = c.backend.xnnpack.extended_ops = True
        if quant != "fp32":
            c.quantization.qmode = _LLAMA_QMODE[quant]
            c.quantization.group_size = group_size if quant == "8da4w" else 0
            c.quantization.embedding_quantize = "8,0"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.WARNING)  # export_llama logs every pass at INFO
        try:
            with torch.no_grad(), warnings.catch_warnings(), quiet_libraries(), native_stderr_silenced(), \
                    contextlib.redirect_stdout(None):
                warnings.simplefilter("ignore")
                written = Path(export_llama(c))
        finally:
            root.setLevel(level)
        data = written.read_bytes()
    return write_atomic(out, lambda t: t.write_bytes(data))


# --- the second peer: optimum-executorch, from the Hugging Face format -----------------------------

OPTIMUM_VENV = Path(__file__).resolve().parents[1] / ".venv-optimum"  # `make optimum-venv`
_OPTIMUM_QUANT = {"fp32": [], "int8": ["--qlinear", "8da8w", "--qembedding", "8w"],
                  "8da4w": ["--qlinear", "8da4w", "--qembedding", "8w"]}


def optimum_python(python: str | os.PathLike | None = None) -> Path | None:
    """The interpreter of the environment that has optimum-executorch (``python``, or ``.venv-optimum``'s), if any.

    optimum-executorch 1.1.0 pins transformers 5.0.0rc1 (its static cache classes left later versions), so
    it lives in an environment of its own, beside the project's, with the same torch and ExecuTorch.
    """
    p = Path(python) if python else OPTIMUM_VENV / "bin" / "python"
    return p if p.is_file() else None


def export_optimum_peer(model: MobileLLM, path: str | os.PathLike, quant: str = "fp32", max_len: int | None = None,
                        group_size: int = DEFAULT_GROUP_SIZE, python: str | os.PathLike | None = None) -> Path:
    """Write ``model`` through optimum-executorch (``optimum-cli export executorch --recipe xnnpack``, its
    custom SDPA and KV cache, the same quant mode and 8-bit table), from the Hugging Face checkpoint that
    ``export.to_transformers`` makes (layer sharing expanded). Runs in optimum-executorch's own environment.

    Its ``forward(input_ids, cache_position)`` takes the chunk's positions and returns every position's
    logits; ``PteDecoder`` runs it as ours.
    """
    import subprocess
    import tempfile

    from .export import to_transformers

    max_len = _check_export(model, quant, max_len, group_size)
    exe = optimum_python(python)
    if exe is None:
        raise FileNotFoundError(f"no optimum-executorch environment at {python or OPTIMUM_VENV}: `make optimum-venv` "
                                "makes one (it pins transformers 5.0.0rc1, so it cannot share .venv)")
    out = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        with quiet_libraries(), contextlib.redirect_stderr(io.StringIO()):  # its "Writing model shards" bar
            to_transformers(model).save_pretrained(Path(tmp) / "hf")
        quant_args = _OPTIMUM_QUANT[quant] + (["--qlinear_group_size", str(group_size)] if quant == "8da4w" and
                                              group_size else [])
        cmd = [str(exe), "-c", "from optimum.commands.optimum_cli import main; main()", "export", "executorch",
               "--model", str(Path(tmp) / "hf"), "--task", "text-generation", "--recipe", "xnnpack",
               "--use_custom_sdpa", "--use_custom_kv_cache", "--max_seq_len", str(max_len),
               "--output_dir", str(Path(tmp) / "pte"), *quant_args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        env.pop("PYTHONPATH", None)  # its own transformers, not ours
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        written = Path(tmp) / "pte" / "model.pte"
        if done.returncode or not written.is_file():
            tail = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
            raise RuntimeError(f"optimum-cli export executorch failed (exit {done.returncode}): {tail[0]}")
        data = written.read_bytes()
    return write_atomic(out, lambda t: t.write_bytes(data))
