"""The pte bench's peers: the same weights lowered by ExecuTorch's own Llama export and by
optimum-executorch, so that our program is timed beside theirs."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch

from ..._files import write_atomic
from ..._quiet import native_stderr_silenced, quiet_libraries
from ...executorch_program import DEFAULT_GROUP_SIZE, _check_export
from ...model import MobileLLM
from ..paths import OPTIMUM_VENV

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
    sd = {
        "tok_embeddings.weight": model.embed_tokens.weight,
        "norm.weight": model.norm.weight,
        "output.weight": model.lm_head.weight,
    }
    names = {
        "attention.wq": "self_attn.q_proj",
        "attention.wk": "self_attn.k_proj",
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.o_proj",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w3": "mlp.up_proj",
        "feed_forward.w2": "mlp.down_proj",
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    for i, b in enumerate(cfg.execution_order):
        block = model.layers[b]
        for meta, ours in names.items():
            sd[f"layers.{i}.{meta}.weight"] = block.get_submodule(ours).weight
    sd = {k: v.detach().to("cpu", torch.float32).clone() for k, v in sd.items()}
    params = {
        "dim": cfg.dim,
        "n_layers": cfg.n_executed_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_dim": cfg.ffn_hidden_dim,
        "vocab_size": cfg.vocab_size,
        "norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "use_hf_rope": True,
        "use_scaled_rope": False,
    }
    return sd, params


def export_llama_peer(
    model: MobileLLM,
    path: str | os.PathLike,
    quant: str = "fp32",
    max_len: int | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Path:
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
            with (
                torch.no_grad(),
                warnings.catch_warnings(),
                quiet_libraries(),
                native_stderr_silenced(),
                contextlib.redirect_stdout(None),
            ):
                warnings.simplefilter("ignore")
                written = Path(export_llama(c))
        finally:
            root.setLevel(level)
        data = written.read_bytes()
    return write_atomic(out, lambda t: t.write_bytes(data))


# --- the second peer: optimum-executorch, from the Hugging Face format -----------------------------

_OPTIMUM_QUANT = {
    "fp32": [],
    "int8": ["--qlinear", "8da8w", "--qembedding", "8w"],
    "8da4w": ["--qlinear", "8da4w", "--qembedding", "8w"],
}


def optimum_python(python: str | os.PathLike | None = None) -> Path | None:
    """The interpreter of the environment that has optimum-executorch (``python``, or ``.venv-optimum``'s), if any.

    optimum-executorch 1.1.0 pins transformers 5.0.0rc1 (its static cache classes left later versions), so
    it lives in an environment of its own, beside the project's, with the same torch and ExecuTorch.
    """
    p = Path(python) if python else OPTIMUM_VENV / "bin" / "python"
    return p if p.is_file() else None


def export_optimum_peer(
    model: MobileLLM,
    path: str | os.PathLike,
    quant: str = "fp32",
    max_len: int | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    python: str | os.PathLike | None = None,
) -> Path:
    """Write ``model`` through optimum-executorch (``optimum-cli export executorch --recipe xnnpack``, its
    custom SDPA and KV cache, the same quant mode and 8-bit table), from the Hugging Face checkpoint that
    ``export.to_transformers`` makes (layer sharing expanded). Runs in optimum-executorch's own environment.

    Its ``forward(input_ids, cache_position)`` takes the chunk's positions and returns every position's
    logits; ``PteDecoder`` runs it as ours.
    """
    import subprocess
    import tempfile

    from ...export import to_transformers

    max_len = _check_export(model, quant, max_len, group_size)
    exe = optimum_python(python)
    if exe is None:
        raise FileNotFoundError(
            f"no optimum-executorch environment at {python or OPTIMUM_VENV}: `make optimum-venv` "
            "makes one (it pins transformers 5.0.0rc1, so it cannot share .venv)"
        )
    out = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        with quiet_libraries(), contextlib.redirect_stderr(io.StringIO()):  # its "Writing model shards" bar
            to_transformers(model).save_pretrained(Path(tmp) / "hf")
        quant_args = _OPTIMUM_QUANT[quant] + (
            ["--qlinear_group_size", str(group_size)] if quant == "8da4w" and group_size else []
        )
        cmd = [
            str(exe),
            "-c",
            "from optimum.commands.optimum_cli import main; main()",
            "export",
            "executorch",
            "--model",
            str(Path(tmp) / "hf"),
            "--task",
            "text-generation",
            "--recipe",
            "xnnpack",
            "--use_custom_sdpa",
            "--use_custom_kv_cache",
            "--max_seq_len",
            str(max_len),
            "--output_dir",
            str(Path(tmp) / "pte"),
            *quant_args,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        env.pop("PYTHONPATH", None)  # its own transformers, not ours
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        written = Path(tmp) / "pte" / "model.pte"
        if done.returncode or not written.is_file():
            tail = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
            raise RuntimeError(f"optimum-cli export executorch failed (exit {done.returncode}): {tail[0]}")
        data = written.read_bytes()
    return write_atomic(out, lambda t: t.write_bytes(data))
