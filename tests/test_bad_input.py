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
from mobilellm.train import FolderLock, checkpoint_dir, save_checkpoint

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
