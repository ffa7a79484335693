"""Our model against transformers' Llama: the equivalence that lets a teacher trust the switches."""

import pytest
import torch

from mobilellm import MobileLLM
from mobilellm.export import from_transformers, to_transformers

from .conftest import tiny_config

pytest.importorskip("transformers")

CASES = {
    "mha": dict(n_kv_heads=4),
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "untied": dict(share_embedding=False),
    "head_dim": dict(head_dim=16),
    "immediate": dict(layer_sharing="immediate"),
    "repeat_all": dict(layer_sharing="repeat_all"),
    "reverse": dict(layer_sharing="reverse"),
    "reverse3": dict(layer_sharing="reverse", layer_repeats=3),
}


def eager_llama(model):
    hf = to_transformers(model)
    hf.config._attn_implementation = "eager"
    return hf


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_llama(case):
    cfg = tiny_config(init="fan_in", **CASES[case])
    model = MobileLLM(cfg).eval()
    hf = eager_llama(model)
    assert hf.config.num_hidden_layers == cfg.n_executed_layers
    x = torch.randint(0, cfg.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-5, rtol=0)
    back = from_transformers(hf)
    assert back.cfg == cfg
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)


def test_shared_model_equals_llama_with_duplicated_layers():
    model = MobileLLM(tiny_config(layer_sharing="immediate")).eval()
    hf = eager_llama(model)
    for i in range(0, hf.config.num_hidden_layers, 2):
        a, b = hf.model.layers[i].mlp.up_proj.weight, hf.model.layers[i + 1].mlp.up_proj.weight
        assert torch.equal(a, b)
    assert hf.config.tie_word_embeddings
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


def test_plain_llama_loads_and_mismatched_sharing_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    hf_cfg._attn_implementation = "eager"
    hf = LlamaForCausalLM(hf_cfg).eval()
    model = from_transformers(hf)
    x = torch.randint(0, 50, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-5, rtol=0)
    hf.config.mobilellm = {"n_layers": 1, "layer_sharing": "immediate", "layer_repeats": 2}
    with pytest.raises(ValueError, match="differs from model.layers.0"):
        from_transformers(hf)


def test_relu_model_has_no_llama_equivalent():
    with pytest.raises(ValueError, match="only 'swiglu' models convert"):
        to_transformers(MobileLLM(tiny_config(ffn_type="relu")))
