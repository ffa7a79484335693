import pytest
import torch

import mobilellm
from mobilellm import ModelConfig, accounting, get_config, list_configs

RELEASED = {
    "mobilellm-125m": 124_635_456,
    "mobilellm-350m": 345_355_200,
    "mobilellm-600m": 603_188_352,
    "mobilellm-1b": 1_005_461_760,
    "mobilellm-1.5b": 1_511_188_800,
    "mobilellm-125m-ls": 124_635_456,
    "mobilellm-350m-ls": 345_355_200,
}


@pytest.mark.parametrize("name,count", RELEASED.items())
def test_released_parameter_counts(name, count):
    cfg = get_config(name)
    assert accounting.param_count(cfg)["total"] == count
    with torch.device("meta"):
        model = mobilellm.MobileLLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == count


def test_ls_presets_run_each_block_twice_in_a_row():
    cfg = get_config("mobilellm-125m-ls")
    assert cfg.execution_order[:6] == (0, 0, 1, 1, 2, 2)
    assert cfg.n_executed_layers == 60


def test_execution_orders():
    base = dict(vocab_size=10, dim=8, n_layers=3, n_heads=2, n_kv_heads=1, ffn_hidden_dim=8)
    assert ModelConfig(**base).execution_order == (0, 1, 2)
    assert ModelConfig(**base, layer_sharing="immediate").execution_order == (0, 0, 1, 1, 2, 2)
    assert ModelConfig(**base, layer_sharing="repeat_all").execution_order == (0, 1, 2, 0, 1, 2)
    assert ModelConfig(**base, layer_sharing="reverse").execution_order == (0, 1, 2, 2, 1, 0)
    assert ModelConfig(**base, layer_sharing="reverse", layer_repeats=3).execution_order == (0, 1, 2, 2, 1, 0, 0, 1, 2)


def test_list_and_unknown_name():
    names = list_configs()
    assert set(RELEASED) <= set(names) and "teach-micro" in names
    with pytest.raises(ValueError, match="valid names: .*mobilellm-125m"):
        get_config("mobilellm-7b")


def test_teaching_presets_keep_the_papers_ratios():
    for name in ("teach-micro", "teach-tiny"):
        cfg = get_config(name)
        parts = accounting.param_count(cfg)
        assert cfg.ffn_type == "swiglu" and cfg.share_embedding
        assert cfg.n_heads // cfg.n_kv_heads in (2, 3)
        assert 0.14 <= parts["embedding"] / parts["total"] <= 0.25, name
        assert abs(cfg.ffn_hidden_dim / cfg.dim - 8 / 3) < 0.05, name


BAD = [
    (dict(n_heads=9, n_kv_heads=4, dim=576), r"n_heads \(9\) must be divisible by n_kv_heads \(4\)"),
    (dict(dim=100, n_heads=3, n_kv_heads=1), r"dim \(100\) must be divisible by n_heads \(3\)"),
    (dict(dim=30, n_heads=2, n_kv_heads=1), r"head_dim \(15\) must be even"),
    (dict(ffn_type="tanh"), r"ffn_type \('tanh'\) must be one of relu, gelu, swiglu"),
    (dict(layer_sharing="twice"), r"layer_sharing \('twice'\) must be one of"),
    (dict(init="xavier"), r"init \('xavier'\) must be one of"),
    (dict(vocab_size=0), r"vocab_size \(0\) must be a positive integer"),
    (dict(n_layers=2.5), r"n_layers \(2.5\) must be a positive integer"),
    (dict(layer_repeats=0), r"layer_repeats \(0\) must be a positive integer"),
    (dict(head_dim=-1), r"head_dim \(-1\) must be a positive integer"),
    (dict(norm_eps=0.0), r"norm_eps \(0.0\) must be > 0"),
    (dict(rope_theta=-1.0), r"rope_theta \(-1.0\) must be > 0"),
    (dict(init_std=0.0), r"init_std \(0.0\) must be > 0"),
]


@pytest.mark.parametrize("changes,message", BAD)
def test_invalid_configs_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


def test_dict_round_trip_and_unknown_field():
    cfg = get_config("mobilellm-350m-ls")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['depth'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "depth": 3})


def test_head_dim_is_resolved_once_and_derived_again_on_replace():
    cfg = ModelConfig(dim=48, n_heads=4, n_kv_heads=2)
    assert cfg.head_dim == 12  # a value, never None, once constructed
    assert cfg.replace(dim=96).head_dim == 24  # derived from the width, so derived again
    assert cfg.replace(n_heads=6, n_kv_heads=2).head_dim == 8
    declared = ModelConfig(dim=48, n_heads=4, n_kv_heads=2, head_dim=16)
    assert declared.replace(dim=96).head_dim == 16  # given explicitly: kept
    assert cfg == ModelConfig(dim=48, n_heads=4, n_kv_heads=2, head_dim=12)  # same shape, equal
    # stored as given, so run keys and saved configs stay what they were
    assert cfg.to_dict()["head_dim"] is None and declared.to_dict()["head_dim"] == 16
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
