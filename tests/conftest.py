import os
from pathlib import Path

import pytest
import torch

from mobilellm import ModelConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config(**changes) -> ModelConfig:
    """A model small enough to build in milliseconds but with every part present."""
    base = dict(vocab_size=97, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden_dim=48,
                max_seq_len=64)
    base.update(changes)
    return ModelConfig(**base)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip on a user's fresh clone."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent (only present in the project's workspace)")
    return SHARED


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
