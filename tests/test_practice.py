"""The learner's model (notebooks/my_mobilellm.py) equals the package at every step of the roadmap, and
its runs train through the package's trainer, cached by the file's source."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mobilellm import MobileLLM
from mobilellm.course import ablations as A
from mobilellm.course import practice
from mobilellm.course.settings import Settings

MINE = Path(__file__).resolve().parents[1] / "notebooks" / "my_mobilellm.py"


@pytest.fixture(scope="module")
def mine():
    spec = importlib.util.spec_from_file_location("my_mobilellm", MINE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_mobilellm"] = module  # inspect.getmodule finds it, as in a notebook
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("my_mobilellm", None)


STEPS = {label: cfg for label, cfg in A.ROADMAP.variants} | {
    "repeat-all-over": A.SHARING_ORDERS.config("repeat-all-over"),
    "reverse": A.SHARING_ORDERS.config("reverse"),
    "MQA": A.GQA.config("MQA (1 KV head)"),
    **{
        f"{order} ×3": A.GQA6.replace(layer_sharing=order, layer_repeats=3)
        for order in ("immediate", "repeat_all", "reverse")
    },
}


@pytest.mark.parametrize("label", list(STEPS))
def test_your_model_computes_the_packages_logits(mine, label):
    cfg = STEPS[label]
    yours = mine.build(cfg, seed=3)
    torch.manual_seed(3)
    assert all(
        torch.equal(a, b)
        for a, b in zip(yours.state_dict().values(), MobileLLM(cfg).state_dict().values(), strict=True)
    )
    assert mine.same_as_package(yours, torch.randint(0, cfg.vocab_size, (2, 40))) < 1e-4
    assert (yours.lm_head.weight is yours.embed_tokens.weight) == cfg.share_embedding
    assert len(yours.order) == cfg.n_executed_layers and yours.order == list(cfg.execution_order)


def test_an_unknown_sharing_order_is_named(mine):
    with pytest.raises(ValueError, match="'twice'"):
        mine.execution_order(3, "twice")


def test_your_run_is_cached_by_the_source_of_your_file(mine, tmp_path, monkeypatch):
    from mobilellm.course import experiments

    monkeypatch.setattr(experiments, "output_dirs", lambda settings=None: (tmp_path, tmp_path))
    quick = Settings(quick=True, progress=False)
    cfg = A.TEACH_BASELINE
    first = practice.train_mine(mine.build, cfg, 200, quick)
    assert len(first["train_loss"]) == 4 and first["final_val_loss"] < first["train_loss"][0][1]
    assert len(list(tmp_path.glob("practice-*.json"))) == 1
    again = practice.train_mine(mine.build, cfg, 200, quick)
    assert again == first  # read back, not retrained
    monkeypatch.setattr(practice.inspect, "getsource", lambda module: "an edited file")
    practice.train_mine(mine.build, cfg, 200, quick)
    assert len(list(tmp_path.glob("practice-*.json"))) == 2  # an edit trains again
