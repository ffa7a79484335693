import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: tests share 2 cores with other processes
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mobilellm import ModelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVAL_DATA = ROOT / "data" / "eval"  # real ARC-Easy, PIQA and COPA rows in hub schema (see its README)
TINYSTORIES = ROOT / "tests" / "data" / "tinystories_sample.txt"


def tiny_config(**changes) -> ModelConfig:
    """A model small enough to build in milliseconds but with every part present."""
    base = dict(vocab_size=97, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden_dim=48, max_seq_len=64)
    base.update(changes)
    return ModelConfig(**base)


def trainable_config(**changes) -> ModelConfig:
    """``tiny_config`` with a 128-token vocabulary and 32-token windows, initialised for training."""
    return tiny_config(vocab_size=128, max_seq_len=32, init="fan_in", **changes)


def quick_train_config(**changes):
    """A TrainConfig of a few CPU steps without a progress bar (12 steps of 8 sequences unless changed)."""
    from mobilellm.train import TrainConfig

    base = dict(
        max_steps=12, batch_size=8, lr=1e-2, warmup_steps=3, eval_every=4, eval_windows=4, progress=False, device="cpu"
    )
    return TrainConfig(**{**base, **changes})


# The files that take longest (minutes: ExecuTorch lowering, the bench, training), longest first.
# `make test` runs files on two workers in collection order (pytest -n 2 --dist loadfile
# --no-loadscope-reorder): starting the long ones first keeps one worker from idling at the end.
LONGEST_FIRST = (
    "test_executorch_quantized.py",
    "test_executorch_program.py",
    "test_bench.py",
    "test_quantize.py",
    "test_book.py",
    "test_train.py",
    "test_checkpoint.py",
)


def pytest_collection_modifyitems(items):
    missing = [name for name in LONGEST_FIRST if not (Path(__file__).parent / name).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names missing files {missing}: update the list")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


@pytest.fixture(autouse=True)
def _seed(monkeypatch):
    torch.manual_seed(0)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # offline unless a test says otherwise; undone after
        if var not in os.environ:
            monkeypatch.setenv(var, "1")


@pytest.fixture(scope="session")
def small_text() -> str:
    """~150k characters of the embedded Shakespeare corpus (the first plays)."""
    from mobilellm.corpora import shakespeare_plays

    return "".join(list(shakespeare_plays().values())[:2])[:150_000]


@pytest.fixture(scope="session")
def small_corpus_file(small_text, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text(small_text)
    return path


@pytest.fixture(scope="session")
def small_data(small_corpus_file, tmp_path_factory):
    """Prepared tokens (vocab 128) of the small corpus."""
    from mobilellm.data import prepare

    return prepare(str(small_corpus_file), vocab_size=128, cache_dir=tmp_path_factory.mktemp("cache"))


def export_config(**changes) -> ModelConfig:
    """The model the quantization and ExecuTorch tests lower: two blocks (lowering time grows with each;
    immediate AABB, repeat_all ABAB and reverse ABBA still differ), widths divisible by 32 (8da4w)."""
    return tiny_config(
        **{
            "vocab_size": 128,
            "dim": 64,
            "n_layers": 2,
            "ffn_hidden_dim": 96,
            "max_seq_len": 64,
            "init": "fan_in",
            **changes,
        }
    )


@pytest.fixture(scope="session")
def trained(small_data, tmp_path_factory):
    """``export_config()`` trained for 150 steps (val loss ~3.3 nats vs 4.85 at chance), and its checkpoint
    folder; shared read-only by the quantization and ExecuTorch tests."""
    from mobilellm.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt")
    tc = TrainConfig(
        max_steps=150,
        batch_size=16,
        seq_len=64,
        warmup_steps=15,
        eval_every=150,
        eval_windows=16,
        progress=False,
        device="cpu",
    )
    model, result = train(export_config(), tc, small_data, out=out)
    assert result.final_val_loss < 3.7
    return model.eval(), out
