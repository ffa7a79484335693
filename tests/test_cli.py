import json
import subprocess
import sys

import pytest

from mobilellm.__main__ import main

from .conftest import EVAL_DATA


@pytest.mark.slow
def test_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "mobilellm", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for opt in (
        "--config",
        "--corpus",
        "--max-steps",
        "--out",
        "--resume",
        "--batch-size",
        "--lr",
        "--device",
        "--compile",
    ):
        assert opt in out.stdout


def test_bad_options_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "gpt-5", "--out", "x"])
    assert e.value.code == 2 and "invalid choice: 'gpt-5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--max-steps", "ten", "--out", "x"])


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: corpus file") and "Traceback" not in err
    assert main(["generate", "--checkpoint", str(tmp_path)]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_train_resume_generate_end_to_end(tmp_path, small_corpus_file, capsys):
    out = tmp_path / "run"
    common = [
        "train",
        "--config",
        "teach-micro",
        "--corpus",
        str(small_corpus_file),
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--seq-len",
        "64",
        "--eval-every",
        "15",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert main(common + ["--max-steps", "15"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["steps"] == 15 and first["final_val_loss"] < 6.3  # below ln(512)
    assert main(common + ["--max-steps", "30", "--resume"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["steps"] == 30 and second["final_val_loss"] < first["final_val_loss"]
    assert main(["generate", "--checkpoint", str(out), "--prompt", "KING:", "--max-new-tokens", "20"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("KING:") and len(text) > len("KING:") + 5


def test_eval_prints_a_table(tmp_path, small_data, capsys):
    from mobilellm import MobileLLM
    from mobilellm.checkpoint import save_checkpoint

    from .conftest import tiny_config

    model = MobileLLM(tiny_config(vocab_size=128, max_seq_len=256, init="fan_in"))
    save_checkpoint(tmp_path / "ck", model, None, None, 0, 0, None, small_data.tokenizer)
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "ck"),
                "--tasks",
                "copa,piqa",
                "--data-dir",
                str(EVAL_DATA),
                "--limit",
                "8",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["metric", "copa", "piqa", "average"]
    assert table[-1].split() == ["rows", "8", "8"]
    assert [r["n"] for r in json.loads(out.read_text())["results"]] == [8, 8]
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--tasks", "mmlu"]) == 2
    assert "unknown task(s) ['mmlu']" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--tasks", "boolq", "--data-dir", str(tmp_path)]) == 2
    assert "boolq.jsonl does not exist" in capsys.readouterr().err


def test_ablation_scale_errors_are_one_line(capsys):
    assert main(["ablation", "swiglu", "--scale", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: width (0) must be a positive integer") and "Traceback" not in err


def test_figures_refuses_zero_seeds_before_running_anything(capsys, monkeypatch):
    import mobilellm.course.notebooks as F

    monkeypatch.setattr(F, "run_notebooks", lambda *a, **k: pytest.fail("notebooks ran"))
    assert main(["figures", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: seeds (0) must be a positive integer") and "Traceback" not in err
