"""Quantized KV-cached ExecuTorch programs (int8, 8da4w) of a trained model: close to fp32, bad inputs
rejected before they reach the runtime, and the CLI's export and generate. (Their own file: the three
lowerings of the shared fixture take minutes, so this file and test_executorch_program.py can run on
different workers under ``pytest -n 2``.)"""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from mobilellm.executorch_program import export_program  # noqa: E402
from mobilellm.executorch_runtime import PteDecoder, compare_programs  # noqa: E402

WINDOW = 48  # the programs' cache window in these tests


@pytest.fixture(scope="module")
def programs(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pte")
    return {q: export_program(trained[0], folder / f"{q}.pte", q, max_len=WINDOW) for q in ("fp32", "int8", "8da4w")}


@pytest.mark.slow
def test_quantized_programs_agree_with_fp32(trained, programs, small_data):
    windows = torch.from_numpy(np.stack([small_data.val[i * 40 : (i + 1) * 40].astype(np.int64) for i in range(4)]))
    r = compare_programs(programs, windows)
    with torch.no_grad():
        logits = trained[0](windows)[:, :-1]
    eager_ppl = torch.nn.functional.cross_entropy(logits.reshape(-1, 128), windows[:, 1:].reshape(-1)).exp().item()
    assert r["fp32"]["ppl"] == pytest.approx(eager_ppl, rel=1e-4) and r["fp32"]["agreement"] == 1.0
    eager_acc = (logits.argmax(-1) == windows[:, 1:]).float().mean().item()
    assert r["fp32"]["accuracy"] == pytest.approx(eager_acc, abs=1e-6) and 0.05 < eager_acc < 1
    assert r["int8"]["agreement"] >= 0.9 and r["int8"]["ppl"] < 1.03 * r["fp32"]["ppl"], r
    assert r["8da4w"]["agreement"] >= 0.75 and r["8da4w"]["ppl"] < 1.15 * r["fp32"]["ppl"], r
    assert r["8da4w"]["bytes"] < r["int8"]["bytes"] < 0.6 * r["fp32"]["bytes"], r


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(programs):
    dec = PteDecoder(programs["fp32"])
    with pytest.raises(ValueError, match="must be int64 .* got torch.float32"):
        dec.step(torch.zeros(3))
    with pytest.raises(ValueError, match="cache window of 48 tokens"):
        dec.step(torch.zeros(49, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="position 5 skips positions 0..4"):
        dec.step(torch.zeros(2, dtype=torch.long), 5)
    dec.step(torch.zeros(47, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="cache window of 48 tokens"):
        dec.step(torch.zeros(2, dtype=torch.long), 47)
    with pytest.raises(ValueError, match=r"token id 128 is outside the vocabulary \[0, 128\)"):
        dec.step(torch.tensor([1, 128]), 0)
    with pytest.raises(ValueError, match="exceeds the program's cache window of 48"):
        next(dec.generate(torch.zeros(40, dtype=torch.long), 9))
    with pytest.raises(ValueError, match="prompt token ids must be int64"):
        next(dec.generate(torch.zeros(4, dtype=torch.float64), 1))
    with pytest.raises(ValueError, match="empty"):
        next(dec.generate([], 1))
    # after the errors the program still decodes
    assert len(list(dec.generate([1, 2, 3], 4))) == 4


@pytest.mark.slow
def test_cli_export_and_generate(trained, small_data, tmp_path, capsys):
    from mobilellm.__main__ import main

    ckpt = trained[1]
    small_data.tokenizer.save(ckpt / "tokenizer.model")
    out = tmp_path / "m.pte"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--format",
                "pte",
                "--quant",
                "int8",
                "--max-len",
                "40",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["quant"] == "int8" and line["max_len"] == 40 and line["tokenizer"] and line["kv_cache_slots"] == 2
    assert line["self_check"]["argmax_agreement"] >= 0.8, line
    assert (
        main(["generate", "--pte", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    )
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.strip()) > len("ROMEO:")
    assert main(["generate", "--pte", str(out), "--prompt", "x " * 60, "--max-new-tokens", "5"]) == 2
    assert "cache window is 40" in capsys.readouterr().err
