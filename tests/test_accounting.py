import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mobilellm import MobileLLM, accounting, get_config

from .conftest import tiny_config


@pytest.mark.parametrize(
    "changes",
    [
        {},
        dict(share_embedding=False),
        dict(ffn_type="relu"),
        dict(n_kv_heads=1),
        dict(layer_sharing="immediate"),
        dict(head_dim=16),
    ],
)
def test_param_count_matches_module(changes):
    cfg = tiny_config(**changes)
    model = MobileLLM(cfg)
    parts = accounting.param_count(cfg)
    assert parts["total"] == sum(p.numel() for p in model.parameters())
    assert parts["embedding"] == model.embed_tokens.weight.numel()
    ffn = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)
    assert parts["ffn"] == ffn


@pytest.mark.parametrize("changes", [{}, dict(layer_sharing="immediate"), dict(n_kv_heads=1)])
def test_flops_match_the_flop_counter(changes):
    cfg = tiny_config(**changes)
    model = MobileLLM(cfg)
    T = 16
    # The math backend runs attention as two bmm's, which the counter sees (the fused CPU kernel
    # is invisible to it).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, cfg.vocab_size, (1, T)))
    assert counter.get_total_flops() == T * accounting.flops_per_token(cfg, seq_len=T)
    assert accounting.flops_per_token(cfg, T, training=True) == 3 * accounting.flops_per_token(cfg, T)


@pytest.mark.parametrize("changes", [{}, dict(layer_sharing="repeat_all"), dict(n_kv_heads=4)])
def test_kv_cache_bytes_match_allocation(changes):
    cfg = tiny_config(**changes)
    cache = MobileLLM(cfg).new_cache(batch_size=1, max_len=10)
    allocated = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    assert allocated == 10 * accounting.kv_cache_bytes_per_token(cfg, torch.float32)


def test_weight_bytes_and_125m_kv_cache():
    cfg = get_config("mobilellm-125m")
    assert accounting.weight_bytes(cfg, "bf16") == 2 * 124_635_456
    assert accounting.weight_bytes(cfg, "int8") == 124_635_456
    # 30 layers x 3 KV heads x 64 x (K and V) x 2 bytes
    assert accounting.kv_cache_bytes_per_token(cfg, "bf16") == 30 * 3 * 64 * 2 * 2
    with pytest.raises(ValueError, match="unknown dtype 'fp64'"):
        accounting.weight_bytes(cfg, "fp64")


def test_training_days_scale_with_tokens():
    cfg = get_config("mobilellm-125m")
    one = accounting.training_days(cfg, 1e12)
    assert accounting.training_days(cfg, 2e12) == pytest.approx(2 * one)
    with pytest.raises(ValueError, match="utilization"):
        accounting.training_days(cfg, 1e12, utilization=1.5)
