import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from mobilellm import MobileLLM
from mobilellm.checkpoint import checkpoint_dir, load_checkpoint
from mobilellm.train import TrainConfig, lr_at, make_optimizer, train

from .conftest import quick_train_config, tiny_config, trainable_config

cfg128 = trainable_config
tc = quick_train_config


def test_schedule_warms_up_then_decays_to_ten_percent():
    c = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(100, c) == pytest.approx(0.1)
    assert all(lr_at(s, c) >= lr_at(s + 1, c) for s in range(10, 100))


def test_no_weight_decay_on_norms_and_embeddings():
    model = MobileLLM(cfg128())
    decay, no_decay = make_optimizer(model, tc()).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any(p is model.embed_tokens.weight for p in no_decay["params"])
    assert all(p.dim() == 2 for p in decay["params"])


def test_loss_falls_on_a_fixed_batch():
    model = MobileLLM(cfg128())
    opt = make_optimizer(model, tc())
    x = torch.randint(0, 128, (4, 33))
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_training_improves_validation_loss(small_data):
    _, result = train(cfg128(), tc(max_steps=40, eval_every=20), small_data)
    (s1, v1), (s2, v2) = result.val_loss
    assert (s1, s2) == (20, 40) and v2 < v1 < 4.9  # ln(128) = 4.85
    assert result.tokens == 40 * 8 * 32 and result.params == sum(p.numel() for p in MobileLLM(cfg128()).parameters())


def test_interrupt_saves_and_resume_is_bit_identical(tmp_path, small_data):
    _, full = train(cfg128(), tc(), small_data, out=tmp_path / "full")

    def interrupt_at_7(step, loss):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    _, part = train(cfg128(), tc(), small_data, out=tmp_path / "part", on_step=interrupt_at_7)
    assert part.interrupted and part.steps == 7
    assert json.loads((checkpoint_dir(tmp_path / "part") / "config.json").read_text())["step"] == 7
    _, rest = train(cfg128(), tc(), small_data, out=tmp_path / "part", resume=True)
    assert not rest.interrupted and rest.steps == 12
    assert rest.train_loss == full.train_loss  # every step's loss, bit for bit
    assert rest.val_loss == full.val_loss
    a, _ = load_checkpoint(tmp_path / "full")
    b, _ = load_checkpoint(tmp_path / "part")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n


def test_resume_refuses_bad_checkpoints(tmp_path, small_data):
    out = tmp_path / "run"
    train(cfg128(), tc(max_steps=4), small_data, out=out)
    with pytest.raises(ValueError, match=r"different model config .*'n_layers': \(3, 2\)"):
        train(cfg128(n_layers=2), tc(max_steps=8), small_data, out=out, resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(cfg128(), tc(), small_data, out=tmp_path / "empty", resume=True)
    state = checkpoint_dir(out) / "train_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(ValueError, match="train_state.pt is corrupt or truncated"):
        train(cfg128(), tc(max_steps=8), small_data, out=out, resume=True)
    weights = checkpoint_dir(out) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors is corrupt or truncated"):
        load_checkpoint(out)
    with pytest.raises(FileNotFoundError, match="is not a checkpoint"):
        load_checkpoint(tmp_path)


def test_vocab_mismatch_is_explained(small_data):
    with pytest.raises(ValueError, match="prepare the data with vocab_size=97"):
        train(tiny_config(), tc(), small_data)


WORKER = textwrap.dedent("""
    import json, sys, torch
    from mobilellm.config import ModelConfig
    from mobilellm.data import prepare
    from mobilellm.train import train, TrainConfig
    corpus, cache, out, fsdp = sys.argv[1:5]
    cfg = ModelConfig(**json.loads(sys.argv[5]))
    data = prepare(corpus, vocab_size=128, cache_dir=cache)
    tc = TrainConfig(max_steps=4, batch_size=8, grad_accum=2, lr=1e-2, warmup_steps=2, eval_every=4,
                     eval_windows=4, progress=False, device="cpu", fsdp=fsdp == "1")
    _, r = train(cfg, tc, data)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        sys.exit(0)
    json.dump([l for _, l in r.train_loss], open(out, "w"))
""")


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", ["0", "1"], ids=["ddp", "fsdp2"])
def test_two_gloo_processes_match_one(tmp_path, small_corpus_file, small_data, fsdp):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cache = small_data.directory.parent.parent
    cfg = json.dumps(cfg128().to_dict())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "one.json"
    subprocess.run(
        [sys.executable, str(script), str(small_corpus_file), str(cache), str(single), "0", cfg],
        check=True,
        env=env,
        timeout=120,
    )
    double = tmp_path / "two.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(small_corpus_file),
            str(cache),
            str(double),
            fsdp,
            cfg,
        ],
        check=True,
        env=env,
        timeout=180,
        capture_output=True,
    )
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, abs=1e-5)
