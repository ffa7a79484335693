"""Checkpoint folders: Meta's released layout in, Hugging Face Llama folders out, and the CLI export."""

import json

import pytest
import torch

from mobilellm import MobileLLM, get_config
from mobilellm.__main__ import main
from mobilellm.export import config_from_hf, load_pretrained, save_pretrained

from .conftest import tiny_config

pytest.importorskip("transformers")

# facebook/MobileLLM-125M's config.json as released (tie_word_embeddings false, yet shared).
RELEASED_125M = {
    "architectures": ["MobileLLMForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_mobilellm.MobileLLMConfig",
        "AutoModelForCausalLM": "modeling_mobilellm.MobileLLMForCausalLM",
    },
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 576,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "layer_sharing": False,
    "max_position_embeddings": 2048,
    "mlp_bias": False,
    "model_type": "mobilellm",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "share_embedding": True,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 32000,
}


def released_config(layer_sharing: bool = False, n_blocks: int = 2) -> dict:
    """A tiny config.json in the released layout (same keys as RELEASED_125M)."""
    return {
        **RELEASED_125M,
        "head_dim": 8,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": n_blocks,
        "max_position_embeddings": 64,
        "vocab_size": 97,
        "layer_sharing": layer_sharing,
    }


def released_state(c: dict, untied: bool = False) -> dict[str, torch.Tensor]:
    """Random weights under the released names: one entry per *stored* block, no lm_head when shared."""
    g = torch.Generator().manual_seed(1)

    def w(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * cols**-0.5

    def norm() -> torch.Tensor:
        return 1 + 0.1 * torch.randn(d, generator=g)  # not all ones, so a swapped norm shows

    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    s = {"model.embed_tokens.weight": torch.randn(v, d, generator=g), "model.norm.weight": norm()}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s.update(
            {
                p + "self_attn.q_proj.weight": w(q, d),
                p + "self_attn.k_proj.weight": w(kv, d),
                p + "self_attn.v_proj.weight": w(kv, d),
                p + "self_attn.o_proj.weight": w(d, q),
                p + "mlp.gate_proj.weight": w(f, d),
                p + "mlp.up_proj.weight": w(f, d),
                p + "mlp.down_proj.weight": w(d, f),
                p + "input_layernorm.weight": norm(),
                p + "post_attention_layernorm.weight": norm(),
            }
        )
    if untied:
        s["lm_head.weight"] = w(v, d)
    return s


def write_released(d, c: dict, state: dict, fmt: str = "bin"):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(c, indent=2))
    if fmt == "bin":
        torch.save(state, d / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(d / "model.safetensors"))
    return d


def llama_reference(c: dict, state: dict):
    """transformers' Llama with the same weights; a shared block becomes two identical layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    n = c["num_hidden_layers"]
    order = [b for b in range(n) for _ in range(2)] if c["layer_sharing"] else list(range(n))
    tied = "lm_head.weight" not in state
    hf_cfg = LlamaConfig(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=len(order),
        num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"],
        head_dim=c["head_dim"],
        max_position_embeddings=c["max_position_embeddings"],
        rms_norm_eps=c["rms_norm_eps"],
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
    )
    hf_cfg._attn_implementation = "eager"
    sd = {k: t for k, t in state.items() if not k.startswith("model.layers.")}
    for slot, block in enumerate(order):
        src = f"model.layers.{block}."
        sd.update({f"model.layers.{slot}." + k[len(src) :]: t for k, t in state.items() if k.startswith(src)})
    if tied:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    hf = LlamaForCausalLM(hf_cfg)
    hf.load_state_dict(sd, strict=True)
    return hf.eval()


def assert_same_logits(model, hf, vocab: int, atol: float = 1e-5) -> None:
    x = torch.randint(0, vocab, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "fmt,sharing,untied",
    [
        ("bin", False, False),
        ("bin", True, False),
        ("safetensors", True, False),
        ("safetensors", False, True),
        ("bin", True, True),
    ],
)
def test_released_layout_equals_llama(tmp_path, fmt, sharing, untied):
    c = released_config(layer_sharing=sharing)
    state = released_state(c, untied=untied)
    model, tok = load_pretrained(write_released(tmp_path / "ckpt", c, state, fmt))
    assert tok is None and not model.training
    assert len(model.layers) == 2 and model.cfg.n_executed_layers == (4 if sharing else 2)
    assert model.cfg.layer_sharing == ("immediate" if sharing else "none")
    # tie_word_embeddings is false in the file; share_embedding (or an lm_head of its own) decides.
    assert model.cfg.share_embedding == (not untied)
    assert (model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()) == (not untied)
    assert_same_logits(model, llama_reference(c, state), c["vocab_size"])


def test_lm_head_equal_to_embedding_is_tied_and_tokenizer_loads(tmp_path, small_data):
    c = released_config()
    state = released_state(c)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # as a pickled tied model saves it
    d = write_released(tmp_path / "ckpt", c, state)
    small_data.tokenizer.save(d / "tokenizer.model")
    model, tok = load_pretrained(d)
    assert model.cfg.share_embedding and model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    assert tok is not None and tok.fingerprint == small_data.tokenizer.fingerprint


def test_released_configs_are_our_presets():
    assert config_from_hf(RELEASED_125M) == get_config("mobilellm-125m")
    assert config_from_hf({**RELEASED_125M, "layer_sharing": True}) == get_config("mobilellm-125m-ls")
    with pytest.raises(ValueError, match="RoPE scaling 'linear'"):
        config_from_hf({**RELEASED_125M, "rope_scaling": {"type": "linear", "factor": 2.0}})


def test_bad_checkpoints_list_every_problem(tmp_path):
    c = released_config(layer_sharing=True)
    state = released_state(c)
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.mlp.down_proj.weight"] = torch.zeros(32, 47)
    # The released layout stores N blocks even when they run 2N times: a block 2 is one too many.
    state["model.layers.2.mlp.up_proj.weight"] = torch.zeros(48, 32)
    state["model.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as e:
        load_pretrained(write_released(tmp_path / "bad", c, state))
    msg = str(e.value)
    for part in (
        "missing layers.1.mlp.up_proj.weight",
        "layers.0.mlp.down_proj.weight: shape (32, 47), model wants (32, 48)",
        "unexpected model.layers.2.mlp.up_proj.weight",
        "unexpected extra.weight",
    ):
        assert part in msg


def test_unsafe_or_absent_weights_are_refused(tmp_path):
    c = released_config()
    state = released_state(c)
    c_untied = {**c, "share_embedding": False}
    with pytest.raises(ValueError, match="missing lm_head.weight"):
        load_pretrained(write_released(tmp_path / "no_head", c_untied, state))
    d = tmp_path / "pickle"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(c))
    torch.save(torch.nn.Linear(2, 2), d / "pytorch_model.bin")  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_pretrained(d)
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights"):
        load_pretrained(d)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "changes",
    [
        dict(init="fan_in", layer_sharing="immediate"),
        dict(share_embedding=False, layer_sharing="reverse", layer_repeats=3, head_dim=16),
    ],
    ids=["immediate", "untied_reverse"],
)
def test_save_pretrained_loads_in_transformers_and_round_trips(tmp_path, changes):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    cfg = tiny_config(**changes)
    model = MobileLLM(cfg).eval()
    out = save_pretrained(model, tmp_path / "hf")
    meta = json.loads((out / "config.json").read_text())
    assert meta["num_hidden_layers"] == cfg.n_executed_layers
    assert meta["mobilellm"]["n_layers"] == cfg.n_layers and "load_pretrained" in meta["mobilellm"]["note"]
    hf = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(hf) is LlamaForCausalLM
    assert_same_logits(model, hf, cfg.vocab_size)
    back, tok = load_pretrained(out)
    assert back.cfg == cfg and tok is None and len(back.layers) == cfg.n_layers
    x = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)


def test_cli_export_from_trainer_checkpoint(tmp_path, small_data, capsys):
    from transformers import AutoModelForCausalLM

    from mobilellm.checkpoint import checkpoint_dir, load_checkpoint
    from mobilellm.train import TrainConfig, train

    cfg = tiny_config(vocab_size=128, layer_sharing="immediate", init="fan_in")
    run = tmp_path / "run"
    train(
        cfg,
        TrainConfig(
            max_steps=2,
            batch_size=4,
            seq_len=32,
            warmup_steps=1,
            eval_every=2,
            eval_windows=2,
            device="cpu",
            progress=False,
        ),
        small_data,
        out=run,
    )
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(run), "--format", "hf", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["llama_layers"] == 6 and summary["stored_blocks"] == 3 and summary["tokenizer"]
    trained, _ = load_checkpoint(run)
    hf = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert_same_logits(trained.eval(), hf, cfg.vocab_size)
    assert (out / "tokenizer.model").read_bytes() == (checkpoint_dir(run) / "tokenizer.model").read_bytes()
    back, tok = load_pretrained(out)
    assert back.cfg == cfg and tok.fingerprint == small_data.tokenizer.fingerprint
    # User errors: one line, exit 2; an unknown format is argparse's.
    capsys.readouterr()  # drop transformers' progress bars
    assert main(["export", "--checkpoint", str(run), "--out", str(run)]) == 2
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "checkpoint folder itself" in err[0] and "does not exist" in err[1]
    with pytest.raises(SystemExit) as e:
        main(["export", "--checkpoint", str(run), "--format", "onnx", "--out", str(out)])
    assert e.value.code == 2
    assert main(["export", "--checkpoint", str(run), "--format", "gguf", "--out", str(out)]) == 2  # a folder
    assert "--format gguf writes one file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="training checkpoint"):
        save_pretrained(trained, run)


def test_hub_repo_id_offline_says_so(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached to fall back on
    with pytest.raises(FileNotFoundError, match="hub is unreachable") as e:
        load_pretrained("facebook/MobileLLM-125M")
    assert "pass the local folder" in str(e.value)
    assert main(["export", "--checkpoint", "facebook/MobileLLM-125M", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'facebook/MobileLLM-125M' is not a local folder") and err.count("\n") == 1
