"""Every bad input a user can give the command line, with the class of its outcome.

One row per input: the command (placeholders filled from the ``env`` fixture), the outcome class —
``error`` (exit 2, one line ``error: …``, no traceback), ``usage`` (argparse's exit 2), ``ok`` —
and a pattern the message must match. Rows marked ``before_data`` must be refused before any data
preparation (``prepare`` raises if called). Add a row with every new option or command.
"""

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

from mobilellm import MobileLLM
from mobilellm.__main__ import main
from mobilellm.checkpoint import FolderLock, checkpoint_dir, save_checkpoint

from .conftest import tiny_config

COPA = {
    "premise": "The man turned on the faucet.",
    "choice1": "The toilet filled.",
    "choice2": "Water flowed.",
    "question": "effect",
    "idx": 0,
    "label": 1,
}


@pytest.fixture(scope="module")
def env(tmp_path_factory, small_data, small_corpus_file):
    """Files for every row: a checkpoint, a Hugging Face export of it, broken corpora and task files."""
    from mobilellm.export import save_pretrained

    t = tmp_path_factory.mktemp("bad")
    model = MobileLLM(tiny_config(vocab_size=128, max_seq_len=64, init="fan_in"))
    save_checkpoint(t / "ck", model, None, None, 0, 0, None, small_data.tokenizer, small_data.fingerprint)
    save_pretrained(model, t / "hf", small_data.tokenizer)
    for name, change in (("shape", {"dim": 64}), ("hostile", {"dim": 16384, "vocab_size": 1_000_000})):
        save_checkpoint(t / name, model, None, None, 0, 0, None, small_data.tokenizer)
        cf = checkpoint_dir(t / name) / "config.json"
        meta = json.loads(cf.read_text())
        meta["model"].update(change)
        cf.write_text(json.dumps(meta))
    save_pretrained(model, t / "hf_hostile", small_data.tokenizer)
    hf_cfg = json.loads((t / "hf_hostile" / "config.json").read_text())
    hf_cfg.update(hidden_size=16384, vocab_size=1_000_000, intermediate_size=43690)
    (t / "hf_hostile" / "config.json").write_text(json.dumps(hf_cfg))
    (t / "a_file").write_text("x")
    (t / "malformed.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n')
    (t / "empty.jsonl").write_text("\n\n")
    (t / "nonstring.jsonl").write_text('{"text": "a"}\n{"text": 42}\n')
    (t / "array_row.jsonl").write_text('{"text": "a"}\n["not", "an", "object"]\n')
    (t / "no_field.jsonl").write_text('{"body": "a"}\n')
    (t / "random.txt").write_bytes(os.urandom(200_000))
    (t / "eval").mkdir()
    rows = [COPA, COPA, {**COPA, "label": 1.0}]
    (t / "eval" / "copa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (t / "eval_array").mkdir()
    (t / "eval_array" / "copa.jsonl").write_text(json.dumps(COPA) + "\n[1, 2]\n")
    readonly = t / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() == 0:  # permission bits do not bind root; a read-only file system does
        readonly = Path("/sys") if Path("/sys").is_dir() else None
    return {"t": t, "ck": t / "ck", "hf": t / "hf", "corpus": small_corpus_file, "readonly": readonly}


def _fill(args, env):
    return [a.format(**{k: v for k, v in env.items() if v is not None}) for a in args]


T = ["train", "--config", "teach-micro", "--no-progress", "--cache-dir", "{t}/cache"]
G = ["generate", "--max-new-tokens", "3"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

CASES = [
    # id, argv, outcome, pattern, refused before data preparation
    ("train-device-cuda", T + ["--out", "{t}/o", "--device", "cuda"], "error", "no CUDA GPU .*--device cpu", True),
    ("train-device-tpu", T + ["--out", "{t}/o", "--device", "tpu"], "error", "device 'tpu'|unknown device 'tpu'", True),
    ("train-out-is-file", T + ["--out", "{t}/a_file"], "error", "--out .*a_file is a file", True),
    ("train-out-under-file", T + ["--out", "{t}/a_file/run"], "error", "is under .*a_file, which is a file", True),
    ("train-out-read-only", T + ["--out", "{readonly}/run"], "error", "cannot write in", True),
    ("train-seq-len-0", T + ["--out", "{t}/o", "--seq-len", "0"], "error", r"seq_len \(0\) must be a positive", True),
    (
        "train-seq-len-neg",
        T + ["--out", "{t}/o", "--seq-len", "-3"],
        "error",
        r"seq_len \(-3\) must be a positive",
        True,
    ),
    ("train-seq-len-too-long", T + ["--out", "{t}/o", "--seq-len", "100000"], "error", "exceeds .*max_seq_len", True),
    ("train-max-steps-0", T + ["--out", "{t}/o", "--max-steps", "0"], "error", r"max_steps \(0\)", True),
    ("train-batch-0", T + ["--out", "{t}/o", "--batch-size", "0"], "error", r"batch_size \(0\)", True),
    ("train-grad-accum", T + ["--out", "{t}/o", "--grad-accum", "3"], "error", "divisible by grad_accum", True),
    ("train-lr-inf", T + ["--out", "{t}/o", "--lr", "inf"], "error", r"lr \(inf\) must be a finite", True),
    ("train-lr-nan", T + ["--out", "{t}/o", "--lr", "nan"], "error", r"lr \(nan\) must be a finite", True),
    ("train-lr-0", T + ["--out", "{t}/o", "--lr", "0"], "error", r"lr \(0.0\) must be a finite number > 0", True),
    (
        "train-into-checkpoint",
        T + ["--out", "{ck}"],
        "error",
        "already holds a checkpoint: pass --resume .*--out .*--overwrite",
        True,
    ),
    ("train-resume-nothing", T + ["--out", "{t}/fresh", "--resume"], "error", "nothing to resume", True),
    ("train-resume-and-overwrite", T + ["--out", "{ck}", "--resume", "--overwrite"], "error", "contradict", True),
    (
        "train-tokenizer-missing",
        T + ["--out", "{t}/o", "--tokenizer", "{t}/nope.model"],
        "error",
        "--tokenizer .* does not exist",
        True,
    ),
    (
        "train-max-chars-0",
        T + ["--out", "{t}/o", "--corpus", "{corpus}", "--max-chars", "0"],
        "error",
        r"max_chars \(0\) must be a positive",
        False,
    ),
    (
        "train-max-chars-neg",
        T + ["--out", "{t}/o", "--corpus", "{corpus}", "--max-chars", "-5"],
        "error",
        r"max_chars \(-5\) must be a positive",
        False,
    ),
    (
        "train-max-chars-shakespeare",
        T + ["--out", "{t}/o", "--max-chars", "1000"],
        "error",
        "embedded shakespeare corpus is fixed",
        False,
    ),
    (
        "train-data-files-shakespeare",
        T + ["--out", "{t}/o", "--data-files", "{corpus}"],
        "error",
        "embedded shakespeare corpus is fixed",
        False,
    ),
    (
        "train-data-files-local",
        T + ["--out", "{t}/o", "--corpus", "{corpus}", "--data-files", "{corpus}"],
        "error",
        "drop --data-files",
        False,
    ),
    (
        "train-unknown-corpus",
        T + ["--out", "{t}/o", "--corpus", "wikipedia"],
        "error",
        "unknown corpus 'wikipedia'",
        False,
    ),
    ("train-missing-corpus", T + ["--out", "{t}/o", "--corpus", "{t}/nope.txt"], "error", "does not exist", False),
    (
        "train-jsonl-malformed",
        T + ["--out", "{t}/o", "--corpus", "{t}/malformed.jsonl"],
        "error",
        "malformed.jsonl: line 3 is not valid JSON",
        False,
    ),
    (
        "train-jsonl-empty",
        T + ["--out", "{t}/o", "--corpus", "{t}/empty.jsonl"],
        "error",
        "empty.jsonl has no rows",
        False,
    ),
    (
        "train-jsonl-non-string",
        T + ["--out", "{t}/o", "--corpus", "{t}/nonstring.jsonl"],
        "error",
        "line 2: 'text' must be a string, got int",
        False,
    ),
    (
        "train-jsonl-array-row",
        T + ["--out", "{t}/o", "--corpus", "{t}/array_row.jsonl"],
        "error",
        "line 2 is a JSON list, not an object",
        False,
    ),
    (
        "train-jsonl-no-field",
        T + ["--out", "{t}/o", "--corpus", "{t}/no_field.jsonl"],
        "error",
        "line 1 has no 'text' field",
        False,
    ),
    (
        "train-random-bytes",
        T + ["--out", "{t}/o", "--corpus", "{t}/random.txt"],
        "error",
        "does not look like text",
        False,
    ),
    ("train-hub-offline", T + ["--out", "{t}/o", "--corpus", "tinystories"], "error", "offline .*--data-files", False),
    (
        "train-hub-offline-fineweb",
        T + ["--out", "{t}/o", "--corpus", "fineweb-edu", "--max-chars", "1000"],
        "error",
        "offline .*--data-files",
        False,
    ),
    ("train-bad-config", T + ["--out", "{t}/o", "--config", "gpt-5"], "usage", "invalid choice", True),
    (
        "generate-temperature-nan",
        G + ["--checkpoint", "{ck}", "--temperature", "nan"],
        "error",
        r"--temperature \(nan\) must be a finite",
        True,
    ),
    (
        "generate-temperature-neg",
        G + ["--checkpoint", "{ck}", "--temperature", "-1"],
        "error",
        r"--temperature \(-1.0\)",
        True,
    ),
    ("generate-top-p-0", G + ["--checkpoint", "{ck}", "--top-p", "0"], "error", r"--top-p \(0.0\)", True),
    ("generate-top-k-0", G + ["--checkpoint", "{ck}", "--top-k", "0"], "error", r"--top-k \(0\)", True),
    ("generate-device-cuda", G + ["--checkpoint", "{ck}", "--device", "cuda"], "error", "no CUDA GPU", True),
    ("generate-missing", G + ["--checkpoint", "{t}/nope"], "error", "does not exist", True),
    ("generate-not-a-checkpoint", G + ["--checkpoint", "{t}/eval"], "error", "is not a checkpoint", True),
    (
        "generate-shape-mismatch",
        G + ["--checkpoint", "{t}/shape"],
        "error",
        r"embed_tokens.weight is \[128, 32\] in the weights but \[128, 64\] by config.json",
        True,
    ),
    (
        "generate-hostile-config",
        G + ["--checkpoint", "{t}/hostile"],
        "error",
        "does not describe model.safetensors",
        True,
    ),
    (
        "generate-hf-hostile-config",
        G + ["--checkpoint", "{t}/hf_hostile"],
        "error",
        "config.json says vocab_size 1000000 x hidden_size 16384 but the weights' embedding is",
        True,
    ),
    ("generate-hf-folder", G + ["--checkpoint", "{hf}", "--prompt", "KING"], "ok", "", True),
    ("eval-tasks-comma", ["eval", "--checkpoint", "{ck}", "--tasks", ","], "error", "names no task", True),
    ("eval-tasks-unknown", ["eval", "--checkpoint", "{ck}", "--tasks", "mmlu"], "error", r"unknown task\(s\)", True),
    (
        "eval-tasks-twice",
        ["eval", "--checkpoint", "{ck}", "--tasks", "copa,piqa,copa"],
        "error",
        "names copa twice: each task counts once",
        True,
    ),
    (
        "eval-limit-0",
        ["eval", "--checkpoint", "{ck}", "--tasks", "copa", "--limit", "0"],
        "error",
        r"--limit \(0\)",
        True,
    ),
    (
        "eval-json-dir",
        ["eval", "--checkpoint", "{ck}", "--tasks", "copa", "--data-dir", "{t}/eval", "--json", "{t}"],
        "error",
        "--json .* is a folder",
        True,
    ),
    (
        "eval-json-under-file",
        ["eval", "--checkpoint", "{ck}", "--tasks", "copa", "--data-dir", "{t}/eval", "--json", "{t}/a_file/r.json"],
        "error",
        "which is a file",
        True,
    ),
    (
        "eval-label-float-line-3",
        ["eval", "--checkpoint", "{ck}", "--tasks", "copa", "--data-dir", "{t}/eval"],
        "error",
        r"row 2 \(line 3\): gold label 1.0 must be an integer",
        True,
    ),
    (
        "eval-array-row-line-2",
        ["eval", "--checkpoint", "{ck}", "--tasks", "copa", "--data-dir", "{t}/eval_array"],
        "error",
        "copa.jsonl: line 2 is a JSON list",
        True,
    ),
    ("eval-hub-offline", ["eval", "--checkpoint", "{ck}", "--tasks", "copa"], "error", "offline .*--data-dir", True),
    (
        "eval-device-tpu",
        ["eval", "--checkpoint", "{ck}", "--tasks", "copa", "--device", "tpu"],
        "error",
        "device 'tpu'",
        True,
    ),
    ("export-hf-out-is-file", ["export", "--checkpoint", "{ck}", "--out", "{t}/a_file"], "error", "is a file", True),
    (
        "export-pte-out-under-file",
        ["export", "--checkpoint", "{ck}", "--format", "pte", "--out", "{t}/a_file/m.pte"],
        "error",
        "which is a file",
        True,
    ),
    (
        "export-pte-out-read-only",
        ["export", "--checkpoint", "{ck}", "--format", "pte", "--out", "{readonly}/m.pte"],
        "error",
        "cannot write in",
        True,
    ),
    (
        "export-pte-seq-len-0",
        ["export", "--checkpoint", "{ck}", "--format", "pte", "--out", "{t}/m.pte", "--seq-len", "0"],
        "error",
        r"--seq-len \(0\)",
        True,
    ),
    (
        "train-seed-huge",
        T + ["--out", "{t}/o", "--seed", "99999999999999999999"],
        "usage",
        "seed is an integer in",
        True,
    ),
    (
        "generate-seed-huge",
        G + ["--checkpoint", "{ck}", "--seed", "-1"],
        "usage",
        r"out of range: a seed is an integer in \[0, 2\*\*63\)",
        True,
    ),
    (
        "train-cache-dir-file",
        T + ["--out", "{t}/o", "--cache-dir", "{t}/a_file"],
        "error",
        "--cache-dir .*a_file is a file",
        True,
    ),
    (
        "train-tokenizer-other-vocab",
        T + ["--out", "{t}/o", "--tokenizer", "{ck}/step-000000/tokenizer.model"],
        "error",
        "has 128 pieces but --config teach-micro has vocab_size 512: pass a tokenizer of 512 pieces, or leave out",
        True,
    ),
    (
        "train-init-from-and-resume",
        T[:1] + T[3:] + ["--out", "{t}/o", "--init-from", "{ck}", "--resume"],
        "error",
        "--init-from starts a new run and --resume continues one",
        True,
    ),
    (
        "train-init-from-other-config",
        T + ["--out", "{t}/o", "--init-from", "{ck}"],
        "error",
        "holds another model than --config teach-micro: leave out --config",
        True,
    ),
    (
        "generate-pte-random-bytes",
        ["generate", "--pte", "{t}/random.txt", "--tokenizer", "{ck}/step-000000/tokenizer.model"],
        "error",
        "is not an ExecuTorch program",
        True,
    ),
    ("ablation-device-tpu", ["ablation", "swiglu", "--device", "tpu"], "error", "device 'tpu'", True),
    ("ablation-device-cuda", ["ablation", "swiglu", "--device", "cuda"], "error", "no CUDA GPU", True),
]


def _case(c):
    marks = [NO_CUDA] if "cuda" in c[0] else []
    return pytest.param(*c[1:], id=c[0], marks=marks)


@pytest.mark.parametrize("argv, outcome, pattern, before_data", [_case(c) for c in CASES])
def test_bad_input(env, argv, outcome, pattern, before_data, capsys, monkeypatch):
    import re

    import mobilellm.course.experiments
    import mobilellm.data
    import mobilellm.evaluate
    import mobilellm.executorch_window

    if "{readonly}" in " ".join(argv) and env["readonly"] is None:
        pytest.skip("no read-only location on this machine")

    def must_not_run(*a, **kw):
        raise AssertionError("slow work started before the input was checked")

    if before_data:
        monkeypatch.setattr(mobilellm.data, "prepare", must_not_run)
    monkeypatch.setattr(mobilellm.executorch_window, "export_executorch", must_not_run)
    monkeypatch.setattr(mobilellm.course.experiments, "run_ablation", must_not_run)
    start = time.perf_counter()
    if outcome == "usage":
        with pytest.raises(SystemExit) as e:
            main(_fill(argv, env))
        assert e.value.code == 2 and re.search(pattern, capsys.readouterr().err)
        return
    code = main(_fill(argv, env))
    out, err = capsys.readouterr()
    if outcome == "ok":
        assert code == 0, err
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert time.perf_counter() - start < 10  # e.g. offline: no 30 s of retries


def test_a_locked_folder_names_the_holder(env, small_corpus_file, capsys):
    out = env["t"] / "locked"
    out.mkdir()
    with FolderLock(out):
        assert main(_fill(T, env) + ["--out", str(out), "--corpus", str(small_corpus_file), "--max-steps", "1"]) == 2
    assert f"in use by another training process (pid {os.getpid()})" in capsys.readouterr().err


def test_ctrl_c_before_the_training_loop_is_one_line(env, monkeypatch, capsys):
    import mobilellm.data

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(mobilellm.data, "prepare", interrupted)
    assert main(_fill(T, env) + ["--out", str(env["t"] / "ctrl-c")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["interrupted: nothing was saved"]


# --- nothing lost: exports never replace a file unasked, and a failed write leaves the old one --------------


def _fake_pte_export(monkeypatch, model_for_logits):
    """ExecuTorch lowering takes a minute; these tests are about the files around it."""
    import mobilellm.executorch_program as ep
    import mobilellm.executorch_runtime as rt

    def export_program(model, path, *a, **kw):
        Path(path).write_bytes(b"PTE")

    class Decoder:
        max_len = 8

        def __init__(self, path):
            pass

        def next_token_logits(self, ids):
            with torch.no_grad():
                return model_for_logits()(ids[None])[0].float()

    monkeypatch.setattr(ep, "export_program", export_program)
    monkeypatch.setattr(rt, "PteDecoder", Decoder)


def test_a_pte_export_into_a_checkpoint_folder_keeps_its_tokenizer(env, monkeypatch, capsys, tmp_path):
    """The program's tokenizer has its own name; an existing program is replaced only with --overwrite."""
    from mobilellm.export import load_pretrained

    ck = tmp_path / "ck"
    model, _ = load_pretrained(env["ck"])
    save_checkpoint(ck, model, None, None, 0, 0, None, load_pretrained(env["ck"])[1])
    step = checkpoint_dir(ck)
    mine = (step / "tokenizer.model").read_bytes()
    (step / "tokenizer.model").write_bytes(mine + b"")  # the checkpoint's own
    _fake_pte_export(monkeypatch, lambda: model)
    assert main(["export", "--checkpoint", str(ck), "--format", "pte", "--out", str(step / "a.pte")]) == 0
    assert main(["export", "--checkpoint", str(ck), "--format", "pte", "--out", str(step / "b.pte")]) == 0
    assert (step / "tokenizer.model").read_bytes() == mine
    assert (step / "a.tokenizer.model").read_bytes() == mine and (step / "b.tokenizer.model").is_file()
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ck), "--format", "pte", "--out", str(step / "a.pte")]) == 2
    assert "already exist" in capsys.readouterr().err and (step / "a.pte").read_bytes() == b"PTE"
    assert (
        main(["export", "--checkpoint", str(ck), "--format", "pte", "--out", str(step / "a.pte"), "--overwrite"]) == 0
    )


def _disk_full(*a, **kw):
    raise OSError(28, "No space left on device")


def test_a_gguf_write_that_fails_leaves_the_old_file_and_no_temporary(env, monkeypatch, capsys, tmp_path):
    pytest.importorskip("gguf")
    import gguf

    out = tmp_path / "m.gguf"
    assert main(["export", "--checkpoint", str(env["ck"]), "--format", "gguf", "--out", str(out)]) == 0
    good = out.read_bytes()
    # the header and metadata are on disk, then the disk fills
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", _disk_full)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(env["ck"]), "--format", "gguf", "--out", str(out), "--overwrite"]) == 2
    assert "No space left" in capsys.readouterr().err
    assert out.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_an_hf_export_that_fails_leaves_the_old_files_and_no_temporary(env, monkeypatch, capsys, tmp_path):
    pytest.importorskip("transformers")
    import transformers

    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(env["ck"]), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", _disk_full)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(env["ck"]), "--out", str(out)]) == 2  # refused unasked
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(env["ck"]), "--out", str(out), "--overwrite"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_a_truncated_token_cache_is_refused_by_name(tmp_path):
    from mobilellm.data import prepare

    first = prepare("shakespeare", vocab_size=256, cache_dir=tmp_path)
    train = first.directory / "train.bin"
    train.write_bytes(train.read_bytes()[:50_000])
    with pytest.raises(ValueError, match=r"train\.bin holds 50000 bytes where meta\.json says .*delete the folder"):
        prepare("shakespeare", vocab_size=256, cache_dir=tmp_path)


def test_a_hand_edited_cached_run_is_refused_by_name(tmp_path):
    from mobilellm.course import experiments as E

    stored = next(p for p in (Path(__file__).resolve().parents[1] / "data" / "results").glob("2x56-*-s1-*.json"))
    E.read_record(stored)  # a committed run agrees with itself
    rec = json.loads(stored.read_text())
    edited = tmp_path / stored.name
    edited.write_text(json.dumps({**rec, "final_val_loss": 1.0}))
    with pytest.raises(ValueError, match=f"{edited.name} says final_val_loss 1.0 but its validation curve ends at"):
        E.read_record(edited)
    edited.write_text(json.dumps({**rec, "final_val_loss": "NaN"}))
    with pytest.raises(ValueError, match="cannot be read|says final_val_loss"):
        E.read_record(edited)
    edited.write_text("{not json")
    with pytest.raises(ValueError, match=f"the cached run {edited.name} cannot be read"):
        E.read_record(edited)


def test_generate_says_when_the_window_cuts_the_output(env, capsys):
    code = main(_fill(G + ["--checkpoint", "{ck}", "--max-new-tokens", "100000", "--prompt", "a"], env))
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("a")
    assert re.search(r"^note: \d+ new tokens, not 100000: the prompt and the output fill the model's limit", err)


def test_resuming_a_run_already_past_max_steps_says_so(tmp_path, small_data):
    from mobilellm.train import TrainConfig, train

    cfg = tiny_config(vocab_size=128, max_seq_len=32)
    tc = TrainConfig(max_steps=3, batch_size=4, eval_every=3, eval_windows=2, progress=False, device="cpu")
    train(cfg, tc, small_data, out=tmp_path / "run")
    with pytest.raises(ValueError, match="is at step 3, and --max-steps is 2: nothing is left to train"):
        train(cfg, dataclasses.replace(tc, max_steps=2), small_data, out=tmp_path / "run", resume=True)


# --- fingerprints: a tokenizer meets only the model it was trained with ----------------------------------


@pytest.fixture(scope="module")
def other_tokenizer(small_text, tmp_path_factory):
    """A tokenizer with the same 128 pieces as the checkpoint's, trained on other text."""
    from mobilellm.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("other") / "other.model"
    Tokenizer.train([small_text.upper()], 128).save(path)
    return path


def test_a_checkpoint_refuses_a_tokenizer_it_was_not_trained_with(env, other_tokenizer, tmp_path, capsys):
    import shutil

    ck, hf = tmp_path / "ck", tmp_path / "hf"
    shutil.copytree(env["ck"], ck)
    shutil.copytree(env["hf"], hf)  # a Hugging Face export records the fingerprint in its config.json too
    (checkpoint_dir(ck) / "tokenizer.model").write_bytes(other_tokenizer.read_bytes())
    (hf / "tokenizer.model").write_bytes(other_tokenizer.read_bytes())
    for folder in (ck, hf):
        for argv in (G + ["--checkpoint", str(folder)], ["eval", "--checkpoint", str(folder), "--tasks", "copa"]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "is not the tokenizer these weights were trained with" in err and "config records" in err


def test_a_program_refuses_a_tokenizer_it_was_not_exported_with(env, other_tokenizer, monkeypatch, tmp_path, capsys):
    """The program stores its tokenizer's fingerprint (``get_tokenizer_id``); ``generate --pte`` compares."""
    import mobilellm.executorch_runtime as rt
    from mobilellm.executorch_program import tokenizer_id
    from mobilellm.tokenizer import Tokenizer

    mine = Tokenizer(checkpoint_dir(env["ck"]) / "tokenizer.model")

    class Decoder:
        max_len, vocab_size = 16, 128
        meta = {"get_tokenizer_id": tokenizer_id(mine.fingerprint)}

        def __init__(self, path):
            pass

        def generate(self, ids, n, *a, **kw):
            yield from [5, 6][:n]

    monkeypatch.setattr(rt, "PteDecoder", Decoder)
    pte = tmp_path / "m.pte"
    pte.write_bytes(b"PTE")
    mine.save(rt.tokenizer_beside(pte))
    assert main(["generate", "--pte", str(pte), "--prompt", "a"]) == 0
    capsys.readouterr()
    assert main(["generate", "--pte", str(pte), "--prompt", "a", "--tokenizer", str(other_tokenizer)]) == 2
    out, err = capsys.readouterr()
    assert "is not the tokenizer" in err and "m.tokenizer.model written beside it" in err


def test_an_error_while_streaming_starts_on_its_own_line(env, monkeypatch, tmp_path, capsys):
    import mobilellm.executorch_runtime as rt
    from mobilellm.tokenizer import Tokenizer

    class Decoder:
        max_len, vocab_size, meta = 16, 128, {}

        def __init__(self, path):
            pass

        def generate(self, ids, n, *a, **kw):
            yield 5
            raise ValueError("the program failed")

    monkeypatch.setattr(rt, "PteDecoder", Decoder)
    pte = tmp_path / "m.pte"
    pte.write_bytes(b"PTE")
    Tokenizer(checkpoint_dir(env["ck"]) / "tokenizer.model").save(rt.tokenizer_beside(pte))
    assert main(["generate", "--pte", str(pte), "--prompt", "KING", "--max-new-tokens", "4"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("KING") and out.endswith("\n") and err == "error: the program failed\n"


# --- resuming: the recipe is kept, and weights without optimizer state are not a dead end ----------------


@pytest.fixture(scope="module")
def three_steps(small_data, tmp_path_factory):
    from mobilellm.train import TrainConfig, train

    cfg = tiny_config(vocab_size=128, max_seq_len=32)
    tc = TrainConfig(max_steps=3, batch_size=4, eval_every=3, eval_windows=2, progress=False, device="cpu")
    out = tmp_path_factory.mktemp("three") / "run"
    train(cfg, tc, small_data, out=out)
    return cfg, tc, out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": 8}, r"batch_size 4 \(now 8\).*resume with --batch-size 4"),
        ({"lr": 3e-3, "seq_len": 16}, r"seq_len 32 \(now 16\), lr 0.01 \(now 0.003\).*--seq-len 32 --lr 0.01"),
        ({"warmup_steps": 5}, "resume with --warmup-steps 50, or start a new run from its weights with --init-from"),
    ],
)
def test_resuming_with_another_recipe_is_refused(three_steps, small_data, change, message, tmp_path):
    import shutil

    from mobilellm.train import train

    cfg, tc, run = three_steps
    out = shutil.copytree(run, tmp_path / "run")
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=message):
        train(cfg, dataclasses.replace(tc, max_steps=6, **change), small_data, out=out, resume=True)
    assert (out / "metrics.jsonl").read_text() == before  # the run's history is untouched
    # what may change: the budget, how often to evaluate, the device
    train(cfg, dataclasses.replace(tc, max_steps=4, eval_every=2, grad_accum=2), small_data, out=out, resume=True)


def test_weights_without_optimizer_state_can_start_a_new_run(env, tmp_path, capsys, small_corpus_file):
    """No train_state.pt: --resume says how to keep the weights (--init-from), and that works."""
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(env["ck"], ck)  # save_checkpoint without an optimizer: weights only
    args = ["train", "--no-progress", "--cache-dir", str(env["t"] / "cache"), "--corpus", str(small_corpus_file)]
    small = ["--max-steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-every", "2"]
    assert main(args + ["--config", "teach-micro", "--out", str(ck), "--resume"]) == 2
    assert f"start a new run from its weights with --init-from {ck}" in capsys.readouterr().err
    assert main(args + small + ["--out", str(tmp_path / "new"), "--init-from", str(ck)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["init_from"] == str(ck) and summary["steps"] == 2
    assert sorted(p.name for p in ck.iterdir() if p.name != ".lock") == ["latest", "step-000000"]  # weights stay
    from mobilellm.export import load_pretrained

    started, _ = load_pretrained(ck)
    assert started.cfg == load_pretrained(tmp_path / "new")[0].cfg


# --- a checkpoint read while its trainer rotates it -------------------------------------------------------


def test_a_checkpoint_rotated_during_a_read_is_read_again(env, tmp_path, monkeypatch):
    """The reader resolved step-000000, the trainer then saved step 1 and deleted step-000000: the read is
    retried on the folder ``latest`` names now, never reported as corrupt."""
    import shutil

    import mobilellm.checkpoint as T_
    from mobilellm.export import load_pretrained

    ck = tmp_path / "ck"
    shutil.copytree(env["ck"], ck)
    model, tok = load_pretrained(ck)
    real = T_._load_once
    calls = []

    def rotating(top, d, *a):
        calls.append(d.name)
        if d.name == "step-000000":  # the trainer's save lands between resolving latest and reading the files
            save_checkpoint(ck, model, None, None, 1, 0, None, tok)
            assert not d.exists()
        return real(top, d, *a)

    monkeypatch.setattr(T_, "_load_once", rotating)
    again, meta, tok2 = T_.load_checkpoint_and_tokenizer(ck)
    assert calls == ["step-000000", "step-000001"] and meta["step"] == 1 and tok2.fingerprint == tok.fingerprint
    # a checkpoint that is broken in place (latest did not move) is still reported, once
    (checkpoint_dir(ck) / "model.safetensors").write_bytes(b"junk")
    calls.clear()
    with pytest.raises(ValueError, match="corrupt or truncated"):
        T_.load_checkpoint(ck)
    assert calls == ["step-000001"]


# --- a full disk during a checkpoint save ----------------------------------------------------------------


def test_a_checkpoint_save_that_fails_keeps_the_last_one_and_leaves_no_temporary(three_steps, monkeypatch, tmp_path):
    import shutil

    import torch as torch_

    from mobilellm.export import load_pretrained

    _, _, run = three_steps
    ck = tmp_path / "run"
    shutil.copytree(run, ck)
    model, tok = load_pretrained(ck)
    optimizer = torch_.optim.AdamW(model.parameters())
    monkeypatch.setattr(torch_, "save", _disk_full)
    with pytest.raises(
        ValueError, match=r"cannot save step 9 in .*No space left.*MiB free there\): the checkpoint of step 3 is kept"
    ):
        save_checkpoint(ck, model, optimizer, None, 9, 0, None, tok)
    assert sorted(p.name for p in ck.iterdir() if p.name != ".lock") == ["latest", "metrics.jsonl", "step-000003"]
    assert load_pretrained(ck)[0].cfg == model.cfg


def test_the_command_line_prints_no_library_chatter(env, tmp_path):
    """torchao's "Failed to load … _C_mxfp8" lines and torch's pytree warning stay off stderr: a program the
    runtime rejects (its header looks right, the rest is noise) gives exactly one line."""
    import subprocess
    import sys

    pytest.importorskip("executorch")
    pte = tmp_path / "noise.pte"
    pte.write_bytes(b"\x3c\x00\x00\x00ET12" + bytes(range(256)) * 64)
    tok = checkpoint_dir(env["ck"]) / "tokenizer.model"
    cmd = [sys.executable, "-m", "mobilellm", "generate", "--pte", str(pte), "--tokenizer", str(tok), "--prompt", "a"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = run.stderr.splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error: {pte} is not an ExecuTorch program ("), run.stderr


def test_a_broken_cached_measurement_is_refused_by_name(tmp_path):
    from mobilellm.course import experiments as E
    from mobilellm.course.settings import Settings

    first = E.cached_measurement("probe", {"k": 1}, lambda: {"ms": 1.0}, Settings(), results_dir=tmp_path)
    Path(first["path"]).write_text('{"result": ')
    with pytest.raises(ValueError, match=f"the cached measurement {re.escape(first['path'])} cannot be read"):
        E.cached_measurement("probe", {"k": 1}, lambda: {"ms": 1.0}, Settings(), results_dir=tmp_path)


@pytest.mark.parametrize("argv", [["ablation", "swiglu"], ["verify", "swiglu"], ["figures", "--readme-only"], ["book"]])
def test_the_course_commands_outside_a_checkout_say_where_they_run(argv, monkeypatch, capsys):
    """From an installed wheel (`pip install mobilellm`), the course's commands have no notebooks or cache."""
    from mobilellm.course import paths

    monkeypatch.setattr(paths, "is_checkout", lambda: False)
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: `{argv[0]}` is a command of the course, which lives in the repository checkout (its notebooks and "
        "results cache): clone the repository and run it there (`make venv` installs the course's extras)\n"
    )
