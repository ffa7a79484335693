"""GGUF for llama.cpp: any MobileLLM written as a Llama GGUF file (F32, F16, Q8_0 or Q4_0), tokenizer included.

As for Hugging Face, a layer-shared model is written as the equivalent plain Llama: its shared
blocks duplicated in execution order (GGUF's Llama, like llama.cpp, has no layer sharing). Tensor
names and the rotary permutation of the query/key rows follow llama.cpp's ``convert_hf_to_gguf.py``:
we rotate half-vectors (as Hugging Face does), GGML rotates neighbouring pairs, so q and k rows
are reordered to match; readers (llama.cpp, transformers' GGUF loader) undo nothing else.

Tokenizer: our SentencePiece model goes in as ``tokenizer.ggml.model = "llama"`` with its pieces,
scores and types, and its dummy-prefix setting as ``add_space_prefix``. llama.cpp's SentencePiece
tokenizer normalizes nothing, so it tokenizes as the original only when the original's
normalization rule is ``identity``: ours are (``data.Tokenizer.train`` sets
``normalization_rule_name="identity"``, keeps whitespace, adds no dummy prefix); a tokenizer
trained with SentencePiece's default ``nmt_nfkc`` (Llama's, MobileLLM's) would differ there on
text that NFKC changes (full-width letters, ligatures, some spaces).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ._files import write_atomic
from ._quiet import native_stderr_silenced
from .export import hf_state_dict
from .formats import GGUF_TYPES
from .model import MobileLLM
from .tokenizer import Tokenizer

# Q8_0: blocks of 32 weights, int8 with one fp16 scale (34 bytes); Q4_0: 4-bit, the same blocks (18 bytes).
_BLOCKED = ("q8_0", "q4_0")
_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _need_gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("GGUF export needs the gguf package: pip install 'gguf>=0.10'") from None
    return gguf


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of q/k from half-rotation order to GGML's pair order (llama.cpp's ``permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: MobileLLM) -> dict[str, np.ndarray]:
    """Our weights under GGUF's Llama names, fp32, shared blocks written out, q/k rows permuted."""
    cfg = model.cfg
    out: dict[str, np.ndarray] = {}
    for key, t in hf_state_dict(model).items():
        w = t.detach().float().cpu().numpy()
        if key == "model.embed_tokens.weight":
            out["token_embd.weight"] = w
        elif key == "model.norm.weight":
            out["output_norm.weight"] = w
        elif key == "lm_head.weight":
            out["output.weight"] = w
        else:
            _, _, i, rest = key.split(".", 3)
            module = rest.removesuffix(".weight")
            if module == "self_attn.q_proj":
                w = _permute(w, cfg.n_heads)
            elif module == "self_attn.k_proj":
                w = _permute(w, cfg.n_kv_heads)
            out[f"blk.{i}.{_NAMES[module]}.weight"] = w
    return out


def _add_tokenizer(writer, tok: Tokenizer) -> None:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.sp.serialized_model_proto())
    # SentencePiece's piece types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)
    # are GGUF's token types, number for number.
    writer.add_tokenizer_model("llama")
    writer.add_token_list([p.piece.encode("utf-8") for p in proto.pieces])
    writer.add_token_scores([p.score for p in proto.pieces])
    writer.add_token_types([int(p.type) for p in proto.pieces])
    sp = tok.sp
    for setter, value in (
        (writer.add_bos_token_id, sp.bos_id()),
        (writer.add_eos_token_id, sp.eos_id()),
        (writer.add_unk_token_id, sp.unk_id()),
        (writer.add_pad_token_id, sp.pad_id()),
    ):
        if value >= 0:
            setter(value)
    writer.add_add_bos_token(False)  # our documents start after EOS; callers add what they need
    writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)


def write_gguf(
    model: MobileLLM, path: str | os.PathLike, tokenizer: Tokenizer | None = None, gguf_type: str = "f16"
) -> Path:
    """Write ``model`` (and ``tokenizer``) as a Llama GGUF file: 2-D weights as ``gguf_type``, norms F32.

    ``gguf_type``: one of ``GGUF_TYPES``; the quantized types quantize every matrix alike, the table too.
    """
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    cfg = model.cfg
    if cfg.ffn_type != "swiglu":
        raise ValueError(f"ffn_type {cfg.ffn_type!r} has no Llama equivalent: only 'swiglu' models write as GGUF")
    if gguf_type in _BLOCKED:
        bad = sorted({d for d in (cfg.dim, cfg.n_heads * cfg.head_dim, cfg.ffn_hidden_dim) if d % 32})
        if bad:
            raise ValueError(
                f"{gguf_type.upper()} quantizes rows in blocks of 32 but the model has rows of {bad}: use f16"
            )
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model {cfg.vocab_size}")
    gguf = _need_gguf()
    Q = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(None, "llama")
    writer.add_name("MobileLLM")
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.n_executed_layers)
    writer.add_feed_forward_length(cfg.ffn_hidden_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    F = gguf.LlamaFileType
    writer.add_file_type(
        {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[gguf_type]
    )
    if tokenizer is not None:
        _add_tokenizer(writer, tokenizer)
    else:  # llama.cpp refuses a file with no tokenizer entry; "no_vocab" lets it run on token ids
        writer.add_tokenizer_model("no_vocab")
    for name, w in gguf_tensors(model).items():
        if w.ndim == 1 or gguf_type == "f32":
            writer.add_tensor(name, w.astype(np.float32))
        elif gguf_type == "f16":
            writer.add_tensor(name, w.astype(np.float16))
        else:
            # quantize() returns bytes shaped (rows, bytes per row); the writer derives the shape from them.
            qtype = Q.Q8_0 if gguf_type == "q8_0" else Q.Q4_0
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)

    def write(tmp: Path) -> None:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return write_atomic(path, write)  # a full disk leaves the old file, not a fragment


def read_back(path: str | os.PathLike) -> torch.nn.Module:
    """The GGUF file loaded by transformers (dequantized to fp32), as a check that a reader understands it."""
    from transformers import AutoModelForCausalLM

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()


class LlamaCppDecoder:
    """A GGUF file run by llama.cpp (``llama-cpp-python``, built from source: ``make llama-cpp``), batch 1.

    ``step(ids, pos)`` as ``executorch_runtime.PteDecoder``'s: feed a chunk at ``pos`` (default: after
    the last one; less rewinds the cache), get the last token's logits; so the same timers run both.
    ``n_threads``: llama.cpp's workers (None: its default). Its workers spin while they wait, so on a
    machine busy with other work more threads than free cores cost far more than they give.
    """

    def __init__(self, path: str | os.PathLike, n_ctx: int, n_threads: int | None = None) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise ImportError(
                "running a GGUF file needs llama-cpp-python, which builds llama.cpp from source "
                "(about 14 CPU-minutes): make llama-cpp"
            ) from None
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist: write it with `python -m mobilellm export --format gguf`")
        self.path, self.max_len = p, n_ctx
        # logits_all: llama-cpp-python keeps logits (its ``scores``) only then; a decode step makes one row anyway
        with native_stderr_silenced():  # llama.cpp's context notes, verbose=False or not
            self._llm = llama_cpp.Llama(
                str(p), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, logits_all=True, verbose=False
            )
        self.vocab_size = self._llm.n_vocab()
        self.pos = 0

    def step(self, ids: torch.Tensor | list[int], pos: int | None = None) -> torch.Tensor:
        """Logits (vocab,) after feeding ``ids`` at ``pos`` (positions from ``pos`` on are overwritten)."""
        ids = [int(i) for i in (ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else ids)]
        pos = self.pos if pos is None else pos
        if not ids or not 0 <= pos <= self.pos or pos + len(ids) > self.max_len:
            raise ValueError(
                f"chunk of {len(ids)} tokens at position {pos}: needs at least one token, a position "
                f"in [0, {self.pos}] and an end within the window of {self.max_len}"
            )
        self._llm.n_tokens = pos  # llama-cpp-python's eval drops the cache from n_tokens on, then appends
        self._llm.eval(ids)
        self.pos = pos + len(ids)
        return torch.from_numpy(self._llm.scores[self.pos - 1].copy())

    def close(self) -> None:
        """Free llama.cpp's model and context now (not at interpreter exit, where freeing them can fail)."""
        self._llm.close()
