"""The loss sequence of a fixed config and seed, pinned: reliability work must not change what train() computes.

The expected values were printed by the code before the checkpoint/validation changes (commit ee226d1)
on the project's CPU; the committed results cache in data/results/ depends on them staying the same.
"""

import pytest

from mobilellm.train import TrainConfig, train

from .conftest import tiny_config

# train(tiny_config(vocab_size=128, max_seq_len=32, init="fan_in"), 5 steps, batch 8, lr 1e-2, warmup 3)
# on the small_data fixture (vocab 128) — printed by the original code, not typed in by hand.
EXPECTED_TRAIN = [5.368862152099609, 5.340206146240234, 5.010716438293457, 4.95723819732666, 4.854565143585205]
EXPECTED_VAL = 4.659578800201416


@pytest.mark.parametrize("into_folder", [False, True], ids=["memory", "folder"])
def test_loss_sequence_is_unchanged(tmp_path, small_data, into_folder):
    cfg = tiny_config(vocab_size=128, max_seq_len=32, init="fan_in")
    tc = TrainConfig(
        max_steps=5, batch_size=8, lr=1e-2, warmup_steps=3, eval_every=5, eval_windows=4, progress=False, device="cpu"
    )
    _, r = train(cfg, tc, small_data, out=tmp_path / "run" if into_folder else None)
    # 1e-6 relative: far below any change of data order, initialisation or arithmetic, yet tolerant
    # of another CPU's last-bit rounding.
    assert [loss for _, loss in r.train_loss] == pytest.approx(EXPECTED_TRAIN, rel=1e-6)
    assert r.val_loss[0][0] == 5 and r.val_loss[0][1] == pytest.approx(EXPECTED_VAL, rel=1e-6)
