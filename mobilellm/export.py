"""Ways out of (and into) ``MobileLLM``: Hugging Face ``LlamaForCausalLM``.

A MobileLLM with SwiGLU is exactly a Llama; layer sharing is a Llama whose layers repeat. So a
shared model converts to the equivalent *unshared* Llama (blocks duplicated in execution order),
and the sharing is remembered in the config (``mobilellm``) so that the way back restores it.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .model import MobileLLM


def _hf_config(cfg: ModelConfig):
    from transformers import LlamaConfig

    if cfg.ffn_type != "swiglu":
        raise ValueError(f"ffn_type {cfg.ffn_type!r} has no Llama equivalent: only 'swiglu' "
                         "models convert to LlamaForCausalLM")
    hf = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_hidden_dim,
        num_hidden_layers=cfg.n_executed_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.hd, max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.share_embedding, attention_bias=False, mlp_bias=False,
        hidden_act="silu", initializer_range=cfg.init_std,
    )
    # Remembered so that from_transformers can fold the duplicated layers back.
    hf.mobilellm = {"n_layers": cfg.n_layers, "layer_sharing": cfg.layer_sharing,
                    "layer_repeats": cfg.layer_repeats, "init": cfg.init}
    return hf


def hf_state_dict(model: MobileLLM) -> dict[str, torch.Tensor]:
    """Our weights under Llama's names, layer-shared blocks duplicated in execution order."""
    out = {"model.embed_tokens.weight": model.embed_tokens.weight, "model.norm.weight": model.norm.weight}
    if not model.cfg.share_embedding:
        out["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.cfg.execution_order):
        for name, tensor in model.layers[block].state_dict().items():
            out[f"model.layers.{i}.{name}"] = tensor
    return out


def to_transformers(model: MobileLLM):
    """An equivalent ``transformers.LlamaForCausalLM`` (fp32, weights copied, same logits)."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(_hf_config(model.cfg))
    state = hf_state_dict(model)
    if model.cfg.share_embedding:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)  # copies, and checks every name and shape
    return hf.eval()


def config_from_hf(hf_cfg) -> ModelConfig:
    """A ModelConfig from a ``LlamaConfig``, undoing our layer-sharing expansion if recorded."""
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))
    if getattr(hf_cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_cfg.hidden_act!r} is not SwiGLU ('silu')")
    extra = getattr(hf_cfg, "mobilellm", None) or {}
    n_layers = extra.get("n_layers", hf_cfg.num_hidden_layers)
    head_dim = getattr(hf_cfg, "head_dim", None)
    if head_dim == hf_cfg.hidden_size // hf_cfg.num_attention_heads:
        head_dim = None  # the default: keep configs comparable with ==
    cfg = ModelConfig(
        vocab_size=hf_cfg.vocab_size, dim=hf_cfg.hidden_size, n_layers=n_layers,
        n_heads=hf_cfg.num_attention_heads, n_kv_heads=hf_cfg.num_key_value_heads,
        ffn_hidden_dim=hf_cfg.intermediate_size, ffn_type="swiglu",
        max_seq_len=hf_cfg.max_position_embeddings, norm_eps=hf_cfg.rms_norm_eps, rope_theta=theta,
        share_embedding=bool(hf_cfg.tie_word_embeddings),
        layer_sharing=extra.get("layer_sharing", "none"), layer_repeats=extra.get("layer_repeats", 2),
        head_dim=head_dim, init=extra.get("init", "normal"),
        init_std=getattr(hf_cfg, "initializer_range", 0.02),
    )
    if cfg.n_executed_layers != hf_cfg.num_hidden_layers:
        raise ValueError(f"config records layer sharing {cfg.layer_sharing!r} over {n_layers} blocks "
                         f"({cfg.n_executed_layers} executed) but the model has "
                         f"{hf_cfg.num_hidden_layers} layers")
    return cfg


def load_hf_state_dict(model: MobileLLM, state: dict[str, torch.Tensor]) -> MobileLLM:
    """Copy Llama-named weights into ``model`` with shape checks; shared blocks must agree."""
    cfg = model.cfg
    ours: dict[str, torch.Tensor] = {}
    seen: dict[str, str] = {}
    problems: list[str] = []
    for key, tensor in state.items():
        if key == "lm_head.weight" and cfg.share_embedding:
            continue
        name = key.removeprefix("model.")
        if name.startswith("layers."):
            _, idx, rest = name.split(".", 2)
            if int(idx) >= cfg.n_executed_layers:
                problems.append(f"unexpected {key}")
                continue
            name = f"layers.{cfg.execution_order[int(idx)]}.{rest}"
            if name in ours and not torch.equal(ours[name], tensor):
                problems.append(f"{key} differs from {seen[name]}, but layer sharing says they are one block")
            seen.setdefault(name, key)
        ours[name] = tensor
    expected = model.state_dict()
    for name, tensor in ours.items():
        if name not in expected:
            problems.append(f"unexpected {name}")
        elif tensor.shape != expected[name].shape:
            problems.append(f"{name}: shape {tuple(tensor.shape)}, model wants {tuple(expected[name].shape)}")
    missing = [n for n in expected if n not in ours and not (n == "lm_head.weight" and cfg.share_embedding)]
    problems += [f"missing {n}" for n in missing]
    if problems:
        raise ValueError("checkpoint does not fit the model:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        params = dict(model.named_parameters(remove_duplicate=False))
        for name, tensor in ours.items():
            params[name].copy_(tensor)
    return model


def from_transformers(hf_model) -> MobileLLM:
    """A ``MobileLLM`` with the weights of a ``LlamaForCausalLM`` (same logits)."""
    cfg = config_from_hf(hf_model.config)
    model = MobileLLM(cfg)
    return load_hf_state_dict(model, hf_model.state_dict()).eval()
