"""Hugging Face format in and out: ``MobileLLM`` to and from ``LlamaForCausalLM``, folders and released checkpoints.

A MobileLLM with SwiGLU is exactly a Llama; layer sharing is a Llama whose layers repeat. So a
shared model converts to the equivalent *unshared* Llama (blocks duplicated in execution order),
and the sharing is remembered in the config (``mobilellm``) so that the way back restores it.

``load_pretrained`` reads three folder layouts: Meta's released checkpoints (``facebook/MobileLLM-*``:
Llama names, ``share_embedding``/``layer_sharing`` flags, N stored blocks), what
``save_pretrained`` writes (a plain Llama folder), and our trainer's checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from ._common import one_line
from ._files import fsync, tmp_path
from ._quiet import quiet_libraries
from .accounting import param_count
from .config import ModelConfig
from .model import MobileLLM
from .tokenizer import Tokenizer

# owner/name, as on the hub; anything else that does not exist locally is a wrong path, not a repo
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# Rotary tables are recomputed from the config; old Llama checkpoints still carry them.
_DERIVED = ("rotary_emb.inv_freq",)


def _hf_config(cfg: ModelConfig):
    from transformers import LlamaConfig

    if cfg.ffn_type != "swiglu":
        raise ValueError(
            f"ffn_type {cfg.ffn_type!r} has no Llama equivalent: only 'swiglu' models convert to LlamaForCausalLM"
        )
    hf = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_hidden_dim,
        num_hidden_layers=cfg.n_executed_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.share_embedding,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        initializer_range=cfg.init_std,
    )
    # Remembered so that from_transformers can fold the duplicated layers back (and give back
    # head_dim exactly as set: the released presets spell out 64 although it is dim // n_heads).
    hf.mobilellm = {
        "n_layers": cfg.n_layers,
        "layer_sharing": cfg.layer_sharing,
        "layer_repeats": cfg.layer_repeats,
        "init": cfg.init,
        "head_dim": cfg.to_dict()["head_dim"],
    }
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
    try:
        with quiet_libraries():
            from transformers import LlamaForCausalLM
    except ImportError:
        raise ImportError(
            "converting to Hugging Face format needs transformers: pip install 'transformers>=4.48'"
        ) from None

    with quiet_libraries():
        hf = LlamaForCausalLM(_hf_config(model.cfg))
    state = hf_state_dict(model)
    if model.cfg.share_embedding:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)  # copies, and checks every name and shape
    return hf.eval()


def _is_released(c: dict) -> bool:
    """Meta's config.json: MobileLLM's own flags, and not one of ours (which records ``mobilellm``)."""
    return ("share_embedding" in c or "layer_sharing" in c) and not c.get("mobilellm")


def config_from_hf(hf_cfg) -> ModelConfig:
    """A ModelConfig from a ``LlamaConfig`` or a config.json dict: ours, a plain Llama, or a released MobileLLM.

    Ours undoes the layer-sharing expansion recorded in ``mobilellm``. A released config counts
    stored blocks in ``num_hidden_layers``, runs each twice in a row when ``layer_sharing`` is true
    (our ``immediate``), and shares embeddings by ``share_embedding`` whatever
    ``tie_word_embeddings`` says (it says false in every released config).
    """
    c = dict(hf_cfg) if isinstance(hf_cfg, dict) else hf_cfg.to_dict()

    def need(key: str):
        if key not in c:
            raise ValueError(f"config has no {key!r}: it is not a Llama or MobileLLM config.json")
        return c[key]

    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {c['hidden_act']!r} is not SwiGLU ('silu')")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise ValueError("the config has attention or MLP biases; MobileLLM (like Llama) has none")
    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    for r in (rope, scaling):
        kind = r.get("rope_type", r.get("type", "default"))
        if kind != "default":
            raise ValueError(f"RoPE scaling {kind!r} is not supported: only plain rotary embeddings")
    theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    n_hidden = need("num_hidden_layers")
    n_heads = need("num_attention_heads")
    extra = c.get("mobilellm") or {}
    released = _is_released(c)
    if released:
        flag = c.get("layer_sharing", False)
        if not isinstance(flag, bool):
            raise ValueError(f"layer_sharing ({flag!r}) must be true or false in a released MobileLLM config")
        n_layers, sharing, repeats = n_hidden, "immediate" if flag else "none", 2
        share = bool(c.get("share_embedding", False))
        head_dim = c.get("head_dim")
    else:
        n_layers = extra.get("n_layers", n_hidden)
        sharing, repeats = extra.get("layer_sharing", "none"), extra.get("layer_repeats", 2)
        share = bool(c.get("tie_word_embeddings", False))
        if "head_dim" in extra:
            head_dim = extra["head_dim"]
        else:
            head_dim = c.get("head_dim")
            if head_dim == need("hidden_size") // n_heads:
                head_dim = None  # the default: derived, as a config built by hand would have it
    cfg = ModelConfig(
        vocab_size=need("vocab_size"),
        dim=need("hidden_size"),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=c.get("num_key_value_heads") or n_heads,
        ffn_hidden_dim=need("intermediate_size"),
        ffn_type="swiglu",
        max_seq_len=need("max_position_embeddings"),
        norm_eps=need("rms_norm_eps"),
        rope_theta=theta,
        share_embedding=share,
        layer_sharing=sharing,
        layer_repeats=repeats,
        head_dim=head_dim,
        init=extra.get("init", "normal"),
        init_std=c.get("initializer_range", 0.02),
    )
    if not released and cfg.n_executed_layers != n_hidden:
        raise ValueError(
            f"config records layer sharing {cfg.layer_sharing!r} over {n_layers} blocks "
            f"({cfg.n_executed_layers} executed) but the model has {n_hidden} layers"
        )
    return cfg


def load_hf_state_dict(model: MobileLLM, state: dict[str, torch.Tensor], stored_blocks: bool = False) -> MobileLLM:
    """Copy Llama-named weights into ``model`` with shape checks; shared blocks must agree.

    ``stored_blocks``: ``model.layers.N`` names stored block N (the released layout), not the
    N-th executed layer (a Llama with the shared blocks written out, as ``to_transformers`` makes).
    """
    cfg = model.cfg
    ours: dict[str, torch.Tensor] = {}
    seen: dict[str, str] = {}
    problems: list[str] = []
    n_slots = cfg.n_layers if stored_blocks else cfg.n_executed_layers
    for key, tensor in state.items():
        if (key == "lm_head.weight" and cfg.share_embedding) or key.endswith(_DERIVED):
            continue
        name = key.removeprefix("model.")
        if name.startswith("layers."):
            _, idx, rest = name.split(".", 2)
            if not idx.isdigit() or int(idx) >= n_slots:
                problems.append(f"unexpected {key}")
                continue
            block = int(idx) if stored_blocks else cfg.execution_order[int(idx)]
            name = f"layers.{block}.{rest}"
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


# --- folders: load_pretrained / save_pretrained ----------------------------------------------


def _download(repo_id: str) -> Path:
    """The hub snapshot of ``repo_id`` (config, tokenizer, weights), from the local cache if there."""
    common = ["config.json", "tokenizer.model"]
    try:
        from huggingface_hub import snapshot_download

        d = Path(
            snapshot_download(repo_id, allow_patterns=common + ["model*.safetensors", "model.safetensors.index.json"])
        )
        if not any(d.glob("model*.safetensors")):
            # The released MobileLLMs ship pickled weights only; fetch those rather than both kinds.
            d = Path(
                snapshot_download(
                    repo_id, allow_patterns=common + ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
                )
            )
    except Exception as e:  # offline, DNS, HTTP, gated or missing repo: one answer for the user
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder, and downloading it from the Hugging Face hub failed "
            f"({one_line(e)}): the hub is unreachable from here (or HF_HUB_OFFLINE=1 is set, "
            f"or the repo is gated or does not exist). Download it where there is network "
            f"(`hf download {repo_id}`) and pass the local folder instead"
        ) from None
    return d


def _resolve(path_or_repo_id: str | os.PathLike) -> Path:
    p = Path(path_or_repo_id).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise FileNotFoundError(f"{p} is a file; pass the folder that holds config.json and the weights")
    if isinstance(path_or_repo_id, str) and _REPO_ID.fullmatch(path_or_repo_id):
        return _download(path_or_repo_id)
    raise FileNotFoundError(
        f"{p} does not exist: pass a checkpoint folder or a hub repo id such as facebook/MobileLLM-125M"
    )


def _weight_files(d: Path) -> list[Path]:
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (d / single).is_file():
            return [d / single]
        if (d / index).is_file():
            try:
                shards = json.loads((d / index).read_text())["weight_map"].values()
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise ValueError(f"{d / index} is not a weight index ({type(e).__name__}: {e})") from None
            return [d / s for s in sorted(set(shards))]
    raise FileNotFoundError(
        f"{d} has no weights: expected model.safetensors or pytorch_model.bin (or a sharded *.index.json)"
    )


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(d):
        if not f.is_file():
            raise FileNotFoundError(f"weight shard {f} listed in the index is missing")
        try:
            # weights_only: a .bin is a pickle, and pickles from the internet can run code.
            part = load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # both loaders raise several types for garbled or hostile files
            raise ValueError(
                f"weights file {f} is corrupt, truncated or not a plain state dict ({one_line(e)})"
            ) from None
        if not isinstance(part, dict) or not all(isinstance(t, torch.Tensor) for t in part.values()):
            raise ValueError(f"weights file {f} is not a state dict of tensors")
        state.update(part)
    return state


def _read_config(d: Path) -> dict:
    path = d / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{d} is not a checkpoint: it has no config.json")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a JSON object")
    return meta


def _shares_embedding(state: dict[str, torch.Tensor], declared: bool) -> bool:
    """Tied or not, as the weights say: an ``lm_head`` of its own means untied, whatever the flags."""
    head, emb = state.get("lm_head.weight"), state.get("model.embed_tokens.weight")
    if head is None:
        return declared
    return emb is not None and head.shape == emb.shape and torch.equal(head, emb)


def _check_size(cfg: ModelConfig, state: dict[str, torch.Tensor], d: Path) -> None:
    """config.json against the weights before building the model: a wrong or hostile config allocates nothing."""
    emb = state.get("model.embed_tokens.weight")
    if emb is not None and tuple(emb.shape) != (cfg.vocab_size, cfg.dim):
        raise ValueError(
            f"{d}: config.json says vocab_size {cfg.vocab_size} x hidden_size {cfg.dim} but the "
            f"weights' embedding is {list(emb.shape)}: config.json does not belong to these weights"
        )
    need = param_count(cfg)["total"]
    have = sum(t.numel() for t in state.values())
    if need > 2 * have:  # near misses get load_hf_state_dict's itemised report; this guards the allocation
        raise ValueError(
            f"{d}: config.json describes {need:,} parameters but the weights hold {have:,}: "
            "config.json does not belong to these weights"
        )


def load_pretrained(
    path_or_repo_id: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[MobileLLM, Tokenizer | None]:
    """A MobileLLM (eval mode) and its tokenizer (None if the folder has none) from a folder or hub id.

    Reads Meta's released layout (``facebook/MobileLLM-125M`` …), ``save_pretrained`` folders
    (and other Llama folders) and our trainer's checkpoints. A string that is no local path but
    looks like ``owner/name`` is downloaded from the hub.
    """
    from .checkpoint import load_checkpoint_and_tokenizer
    from .devices import auto_device

    d = _resolve(path_or_repo_id)
    dev = auto_device(device) if isinstance(device, str) else device
    # A training folder (its current step-* checkpoint) or a flat one of ours: weights and tokenizer
    # are read from one step folder, the tokenizer checked against the fingerprint it recorded.
    meta = None if (d / "latest").is_file() else _read_config(d)
    if meta is None or isinstance(meta.get("model"), dict):
        model, _, tok = load_checkpoint_and_tokenizer(d, dev)
        return model.eval(), tok
    state = _read_weights(d)
    cfg = config_from_hf(meta)
    cfg = cfg.replace(share_embedding=_shares_embedding(state, cfg.share_embedding))
    _check_size(cfg, state, d)
    model = load_hf_state_dict(MobileLLM(cfg), state, stored_blocks=_is_released(meta)).to(dev)
    ours = meta.get("mobilellm") if isinstance(meta.get("mobilellm"), dict) else {}
    return model.eval(), Tokenizer.beside_weights(d / "tokenizer.model", ours.get("tokenizer_fingerprint"))


def _note(cfg: ModelConfig) -> str:
    text = (
        "Written by mobilellm.export.save_pretrained. A MobileLLM is a Llama: transformers loads this "
        "folder as LlamaForCausalLM with the same logits."
    )
    if cfg.layer_sharing != "none":
        text += (
            f" The model shares layers ({cfg.layer_sharing}): its {cfg.n_layers} stored blocks run as "
            f"{cfg.n_executed_layers} layers per forward pass. Llama has no layer sharing, so they are saved "
            f"as {cfg.n_executed_layers} separate layers (copies; layer i holds block "
            f"{list(cfg.execution_order)}[i]); mobilellm.export.load_pretrained folds them back "
            f"into {cfg.n_layers} shared blocks."
        )
    text += (
        " Input and output embeddings are tied."
        if cfg.share_embedding
        else " Input and output embeddings are separate (untied)."
    )
    return text


def save_pretrained(model: MobileLLM, out_dir: str | os.PathLike, tokenizer: Tokenizer | None = None) -> Path:
    """Write a Hugging Face Llama folder (config.json, model.safetensors, tokenizer.model) for ``model``.

    ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` gives the same logits;
    ``load_pretrained(out_dir)`` gives back this model, layer sharing included.
    """
    out = Path(out_dir)
    if (
        (out / "train_state.pt").exists()
        or (out / "latest").exists()
        or ((out / "config.json").is_file() and isinstance(_read_config(out).get("model"), dict))
    ):
        raise ValueError(f"{out} holds a training checkpoint, which this would overwrite: write to another folder")
    hf = to_transformers(model)
    hf.config.mobilellm["note"] = _note(model.cfg)
    if tokenizer is not None:  # load_pretrained refuses another tokenizer put beside these weights
        hf.config.mobilellm["tokenizer_fingerprint"] = tokenizer.fingerprint
    out.mkdir(parents=True, exist_ok=True)
    # Written whole into a hidden folder beside, then each file renamed into place: a full disk or a
    # kill leaves the previous export's files, never a truncated one.
    staging = tmp_path(out / "export")
    try:
        staging.mkdir()
        with quiet_libraries():
            hf.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save(staging / "tokenizer.model")
        for f in staging.iterdir():
            fsync(f)
        for f in sorted(staging.iterdir(), key=lambda f: f.name == "config.json"):  # the config last
            os.replace(f, out / f.name)
        fsync(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
