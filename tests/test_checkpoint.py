"""Checkpoints as one atomic unit, runs that refuse to clobber or to diverge quietly, and honest load errors."""

import functools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mobilellm import MobileLLM
from mobilellm.checkpoint import FolderLock, _load_train_state, checkpoint_dir, load_checkpoint, save_checkpoint
from mobilellm.train import make_optimizer, train

from .conftest import quick_train_config, trainable_config

cfg128 = trainable_config
tc = functools.partial(quick_train_config, max_steps=4, batch_size=4, warmup_steps=1, eval_every=2, eval_windows=2)


def _assert_loadable(out: Path, steps: set[int], tokenizer_fp: str) -> int:
    """A complete, consistent checkpoint: weights, config, optimizer state and tokenizer of one step."""
    model, meta = load_checkpoint(out)
    assert meta["step"] in steps
    state = _load_train_state(checkpoint_dir(out), meta["step"])
    assert state["step"] == meta["step"]
    from mobilellm.tokenizer import Tokenizer

    assert Tokenizer(checkpoint_dir(out) / "tokenizer.model").fingerprint == tokenizer_fp
    return meta["step"]


# --- one atomic unit -------------------------------------------------------------------------


def _save(out, model, step, tok):
    opt = make_optimizer(model, tc())
    save_checkpoint(out, model, opt, tc(), step, step * 100, torch.Generator().manual_seed(step), tok, "fp")


POINTS_DRIVER = textwrap.dedent("""
    # Run in a fresh process with one thread, so that fork() copies no pool threads or held locks.
    import json, os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import safetensors.torch
    import mobilellm.checkpoint
    from mobilellm.config import ModelConfig
    from mobilellm.tokenizer import Tokenizer
    from mobilellm.model import MobileLLM
    from mobilellm.checkpoint import _load_train_state, checkpoint_dir, load_checkpoint, save_checkpoint
    from mobilellm.train import make_optimizer, TrainConfig
    out, tok = Path(sys.argv[1]), Tokenizer(sys.argv[2])
    cfg = ModelConfig(vocab_size=128, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden_dim=48, max_seq_len=32)
    tc = TrainConfig(device="cpu", progress=False)

    def save(step):
        torch.manual_seed(step)
        model = MobileLLM(cfg)
        save_checkpoint(out, model, make_optimizer(model, tc), tc, step, 0, torch.Generator(), tok, "fp")

    def check():
        model, meta = load_checkpoint(out)
        state = _load_train_state(checkpoint_dir(out), meta["step"])
        assert state["step"] == meta["step"]
        assert Tokenizer(checkpoint_dir(out) / "tokenizer.model").fingerprint == tok.fingerprint
        return meta["step"]

    ops = [(os, "replace"), (os, "mkdir"), (os, "chmod"), (os, "fsync"), (os, "unlink"), (os, "rmdir"),
           (Path, "write_text"), (Path, "write_bytes"), (torch, "save"), (safetensors.torch, "save_model"),
           (mobilellm.checkpoint.shutil, "rmtree")]
    save(1)
    seen, k = [], 0
    while True:
        k += 1
        pid = os.fork()
        if pid == 0:  # the child: count file operations, die (os._exit: no cleanup runs) at the k-th
            count = [0]

            def point():
                count[0] += 1
                if count[0] == k:
                    os._exit(9)

            def wrap(fn):
                def hooked(*a, **kw):
                    point()
                    r = fn(*a, **kw)
                    point()
                    return r
                return hooked

            for owner, name in ops:
                setattr(owner, name, wrap(getattr(owner, name)))
            try:
                save(2)
            finally:
                os._exit(0)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        step = check()
        seen.append([k, code, step])
        if code == 0:
            break
        if step == 2:  # the switch happened: the next kill starts from the old checkpoint again
            save(1)
    print(json.dumps(seen))
""")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_kill_at_every_point_of_a_save_leaves_a_loadable_checkpoint(tmp_path, small_data):
    """Kill a save at every file operation (before and after each) and load what is left, every time."""
    tok_file = tmp_path / "tok.model"
    small_data.tokenizer.save(tok_file)
    run = subprocess.run(
        [sys.executable, "-c", POINTS_DRIVER, str(tmp_path / "run"), str(tok_file)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    *killed, (_, last_code, last_step) = seen
    assert last_code == 0 and last_step == 2  # the save that ran to its end
    assert len(killed) > 20 and all(code == 9 for _, code, _ in killed)
    assert {step for _, _, step in killed} == {1, 2}  # kills before and after the switch were both seen


KILL_CHILD = textwrap.dedent("""
    import sys, torch
    from mobilellm.config import ModelConfig
    from mobilellm.tokenizer import Tokenizer
    from mobilellm.model import MobileLLM
    from mobilellm.checkpoint import save_checkpoint
    from mobilellm.train import make_optimizer, TrainConfig
    out, tok = sys.argv[1], Tokenizer(sys.argv[2])
    cfg = ModelConfig(vocab_size=128, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden_dim=512,
                      max_seq_len=32)
    model = MobileLLM(cfg)
    tc = TrainConfig(device="cpu", progress=False)
    opt = make_optimizer(model, tc)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()  # optimizer state exists, so train_state.pt is large too
    for step in range(1, 10_000):
        save_checkpoint(out, model, opt, tc, step, 0, torch.Generator(), tok, "fp")
        if step == 1:
            print("ready", flush=True)
""")


@pytest.mark.slow
def test_sigkill_during_saves_never_loses_the_checkpoint(tmp_path, small_data):
    """Real SIGKILLs at random instants of a child that saves a ~3M-parameter checkpoint in a loop."""
    tok_file = tmp_path / "tok.model"
    small_data.tokenizer.save(tok_file)
    rng = random.Random(0)
    for i in range(6):
        out = tmp_path / f"run{i}"
        child = subprocess.Popen(
            [sys.executable, "-c", KILL_CHILD, str(out), str(tok_file)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        assert child.stdout.readline().strip() == "ready"
        import time

        time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        _assert_loadable(out, set(range(1, 10_000)), small_data.tokenizer.fingerprint)
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".step-")]
        assert len(leftovers) <= 1  # at most the save that was cut, removed by the next one


def test_a_flat_checkpoint_still_loads_and_is_replaced_by_a_step_folder(tmp_path, small_data):
    from safetensors.torch import save_model

    flat = tmp_path / "flat"
    flat.mkdir()
    model = MobileLLM(cfg128())
    (flat / "config.json").write_text(json.dumps({"model": model.cfg.to_dict(), "train": None, "step": 0}))
    save_model(model, str(flat / "model.safetensors"), metadata={"step": "0"})
    assert load_checkpoint(flat)[1]["step"] == 0
    _save(flat, model, 3, small_data.tokenizer)
    assert checkpoint_dir(flat).name == "step-000003" and not (flat / "model.safetensors").exists()


# --- refusing to clobber ---------------------------------------------------------------------


def test_training_into_a_checkpoint_needs_resume_or_overwrite(tmp_path, small_data):
    out = tmp_path / "run"
    train(cfg128(), tc(max_steps=4), small_data, out=out)
    with pytest.raises(ValueError, match=r"already holds a checkpoint \(step 4\): pass --resume .*--overwrite"):
        train(cfg128(), tc(max_steps=2), small_data, out=out)
    assert load_checkpoint(out)[1]["step"] == 4  # untouched
    train(cfg128(), tc(max_steps=2), small_data, out=out, overwrite=True)
    assert load_checkpoint(out)[1]["step"] == 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 2  # one run's metrics, not two interleaved


def test_overwrite_keeps_the_old_checkpoint_until_the_new_run_has_saved_one(tmp_path, small_data):
    """A new run that fails before its first save (divergence, a kill) leaves the old run loadable."""
    out = tmp_path / "run"
    train(cfg128(), tc(max_steps=4), small_data, out=out)
    old_metrics = (out / "metrics.jsonl").read_text()

    def die(step, loss):
        if step == 1:
            raise KeyboardInterrupt  # stands for a SIGKILL a few seconds in: nothing after this line runs

    with pytest.raises(KeyboardInterrupt):
        train(cfg128(), tc(max_steps=4, checkpoint_every=2), small_data, out=out, overwrite=True, on_step=die)
    assert load_checkpoint(out)[1]["step"] == 4  # the old run, whole
    assert (out / "metrics.jsonl").read_text() == old_metrics
    train(cfg128(), tc(max_steps=2), small_data, out=out, overwrite=True)
    assert load_checkpoint(out)[1]["step"] == 2
    assert [p.name for p in out.iterdir() if p.name.startswith("step-")] == [checkpoint_dir(out).name]


def test_a_second_process_on_the_folder_is_refused_naming_the_holder(tmp_path, small_data):
    out = tmp_path / "run"
    out.mkdir()
    with FolderLock(out):
        with pytest.raises(ValueError, match=rf"in use by another training process \(pid {os.getpid()}\)"):
            train(cfg128(), tc(), small_data, out=out)
    train(cfg128(), tc(max_steps=2), small_data, out=out)  # released


def test_temporary_names_are_unique(tmp_path):
    from mobilellm._files import tmp_path as tmp_name

    p = tmp_path / "x.bin"
    assert len({tmp_name(p) for _ in range(50)}) == 50
    assert all(t.parent == p.parent and t.name.startswith(".x.bin.tmp-") for t in {tmp_name(p)})


# --- silently wrong --------------------------------------------------------------------------


def test_the_checkpoint_tokenizer_is_the_one_trained_with_and_resume_checks_the_data(
    tmp_path, small_data, small_corpus_file
):
    from mobilellm.data import prepare

    out = tmp_path / "run"
    train(cfg128(), tc(max_steps=2), small_data, out=out)
    other_text = tmp_path / "other.txt"
    other_text.write_text(small_corpus_file.read_text()[::-1])
    other = prepare(str(other_text), vocab_size=128, cache_dir=tmp_path / "cache")
    assert other.tokenizer.fingerprint != small_data.tokenizer.fingerprint
    with pytest.raises(ValueError, match="trained with another tokenizer"):
        train(cfg128(), tc(max_steps=4), other, out=out, resume=True)
    train(cfg128(), tc(max_steps=2), other, out=out, overwrite=True)
    assert (checkpoint_dir(out) / "tokenizer.model").read_bytes() == other.tokenizer.model_proto


def test_resume_refuses_other_text_with_the_same_tokenizer(tmp_path, small_data, small_corpus_file):
    from mobilellm.data import prepare

    out = tmp_path / "run"
    train(cfg128(), tc(max_steps=2), small_data, out=out)
    text = tmp_path / "more.txt"
    text.write_text(small_corpus_file.read_text() + "\nA few more words.\n")
    other = prepare(
        str(text), vocab_size=128, cache_dir=tmp_path / "cache", tokenizer=checkpoint_dir(out) / "tokenizer.model"
    )
    with pytest.raises(ValueError, match="trained on other data"):
        train(cfg128(), tc(max_steps=4), other, out=out, resume=True)


@pytest.mark.parametrize("lr", [float("inf"), float("nan")])
def test_an_infinite_learning_rate_is_refused(lr):
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        tc(lr=lr)


def test_divergence_stops_at_the_first_non_finite_loss_and_keeps_the_good_checkpoint(tmp_path, small_data, monkeypatch):
    import mobilellm.train

    out = tmp_path / "run"
    train(cfg128(), tc(max_steps=2), small_data, out=out)
    good = load_checkpoint(out)[0].state_dict()
    # a resumed run keeps its recipe, so the learning rate blows up inside the schedule
    monkeypatch.setattr(mobilellm.train, "lr_at", lambda step, t: 1e30)
    with pytest.raises(
        ValueError,
        match=r"training diverged: the \w+ loss is nan at step \d+ \(learning rate "
        r"[0-9.]+e\+(29|30)\); nothing was saved for this step; the checkpoint in "
        r".* \(step 2\) is the last good one",
    ):
        train(cfg128(), tc(max_steps=40), small_data, out=out, resume=True)
    for k, v in load_checkpoint(out)[0].state_dict().items():
        assert torch.equal(v, good[k]), k
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c} in metrics.jsonl"))
    # a fresh run that diverges leaves no checkpoint at all, never a non-finite one
    with pytest.raises(ValueError, match=r"training diverged: .*nothing was saved for this step\. Use a lower"):
        train(cfg128(), tc(max_steps=40, lr=1e30, warmup_steps=0), small_data, out=tmp_path / "fresh")
    assert checkpoint_dir(tmp_path / "fresh") is None


def test_non_finite_weights_are_never_saved(tmp_path, small_data):
    model = MobileLLM(cfg128())
    _save(tmp_path, model, 1, small_data.tokenizer)
    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    with pytest.raises(ValueError, match="holds NaN or inf"):
        _save(tmp_path, model, 2, small_data.tokenizer)
    assert load_checkpoint(tmp_path)[1]["step"] == 1


# --- load errors that say what is wrong ------------------------------------------------------


def test_weights_are_written_with_the_same_permissions_as_the_other_files(tmp_path, small_data):
    _save(tmp_path, MobileLLM(cfg128()), 1, small_data.tokenizer)
    d = checkpoint_dir(tmp_path)
    modes = {f.name: f.stat().st_mode & 0o777 for f in d.iterdir()}
    assert len(set(modes.values())) == 1, modes


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="permission bits do not bind root")
def test_an_unreadable_checkpoint_says_permission_denied(tmp_path, small_data):
    _save(tmp_path, MobileLLM(cfg128()), 1, small_data.tokenizer)
    f = checkpoint_dir(tmp_path) / "model.safetensors"
    f.chmod(0o200)
    with pytest.raises(ValueError, match="permission denied .*chmod a\\+r"):
        load_checkpoint(tmp_path)


def test_a_hugging_face_folder_is_not_called_corrupt(tmp_path, small_data):
    from mobilellm.export import save_pretrained

    save_pretrained(MobileLLM(cfg128()), tmp_path / "hf", small_data.tokenizer)
    with pytest.raises(ValueError, match="is a Hugging Face model folder .*load_pretrained"):
        load_checkpoint(tmp_path / "hf")


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"dim": 64, "n_heads": 4},
            r"embed_tokens.weight is \[128, 32\] in the weights but \[128, 64\] by config.json",
        ),
        ({"dim": 16384, "vocab_size": 1_000_000, "ffn_hidden_dim": 43690}, "does not describe model.safetensors"),
        ({"n_layers": 4}, "missing"),
    ],
    ids=["shape", "hostile", "layers"],
)
def test_a_config_that_does_not_fit_the_weights_is_named_before_allocating(tmp_path, small_data, change, match):
    _save(tmp_path, MobileLLM(cfg128()), 1, small_data.tokenizer)
    cf = checkpoint_dir(tmp_path) / "config.json"
    meta = json.loads(cf.read_text())
    meta["model"].update(change)
    cf.write_text(json.dumps(meta))
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=match):
        load_checkpoint(tmp_path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: far below 65 GB


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_an_unavailable_device_is_named(tmp_path, small_data):
    _save(tmp_path, MobileLLM(cfg128()), 1, small_data.tokenizer)
    with pytest.raises(ValueError, match="no CUDA GPU .*--device cpu"):
        load_checkpoint(tmp_path, "cuda")


def test_a_permission_error_is_not_called_corrupt(tmp_path, small_data, monkeypatch):
    """Root ignores permission bits, so the error is injected where the weights' header is read."""
    import mobilellm.checkpoint

    _save(tmp_path, MobileLLM(cfg128()), 1, small_data.tokenizer)

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(mobilellm.checkpoint, "_safetensors_header", denied)
    with pytest.raises(ValueError, match=r"cannot read .*model.safetensors: permission denied \(mode -rw"):
        load_checkpoint(tmp_path)


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mobilellm.checkpoint import FolderLock
    with FolderLock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.mark.slow
def test_another_process_holding_the_folder_is_named_by_pid(tmp_path, small_data):
    out = tmp_path / "run"
    out.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"in use by another training process \(pid {child.pid}\)"):
            train(cfg128(), tc(), small_data, out=out)
    finally:
        child.kill()
        child.wait()
    train(cfg128(), tc(max_steps=2), small_data, out=out)  # a dead holder's lock is gone with it
