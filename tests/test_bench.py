"""The benchmark runs end to end and reports what it promises. No timing assertions: speed is
measured by ``python -m mobilellm bench`` on a quiet machine, never asserted in tests."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from mobilellm import MobileLLM
from mobilellm.__main__ import main
from mobilellm.accounting import param_count
from mobilellm.course.bench import ALL_SUITES, BenchSettings, bench_train, row_of, run_bench, twin, write_json
from mobilellm.timing import measure

from .conftest import tiny_config

QUICK = BenchSettings.make(quick=True, repeats=1, progress=False)


def _ok(x) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    return run_bench(["all"], [tiny_config()], QUICK)


@pytest.mark.slow
def test_report_has_machine_and_ceilings(report):
    m = report["machine"]
    for key in ("platform", "cpu_count", "torch_threads", "torch", "transformers", "git_commit", "date"):
        assert key in m
    assert report["settings"]["suites"] == list(ALL_SUITES) and report["settings"]["quick"]
    assert _ok(report["ceilings"]["matmul"]["gflops"]) and _ok(report["ceilings"]["memory"]["gbs"])


@pytest.mark.slow
def test_train_suite_compares_with_hf(report):
    (r,) = report["train"]
    assert r["tokens_per_step"] == r["batch"] * r["seq_len"]
    ours, hf = row_of(r["variants"], "ours"), row_of(r["variants"], "hf")
    for side in (ours, hf):
        for key in ("tokens_per_s", "gflops", "step_ms", "fraction_of_matmul"):
            assert _ok(side[key]), (side["name"], key)
        assert side["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / (side["step_ms"] / 1e3))
    assert r["ratio_vs_hf"] == pytest.approx(ours["tokens_per_s"] / hf["tokens_per_s"])
    assert row_of(r["variants"], "ours_compiled") is None and "ours_compiled" in r["skipped"]  # quick: no compile


@pytest.mark.slow
def test_decode_suite_compares_with_hf_and_the_bound(report):
    (r,) = report["decode"]
    ours, hf = row_of(r["variants"], "ours"), row_of(r["variants"], "hf")
    for side in (ours, hf):
        assert _ok(side["prefill_ms"]) and _ok(side["generate_ms"])
    for key in ("prefill_speedup_vs_hf", "weight_bytes_per_token", "ceiling_tokens_per_s"):
        assert _ok(r[key]), key
    assert r["prefill_speedup_vs_hf"] == pytest.approx(hf["prefill_ms"] / ours["prefill_ms"])
    gbs = report["ceilings"]["memory"]["gbs"]
    assert r["ceiling_tokens_per_s"] == pytest.approx(gbs * 1e9 / r["weight_bytes_per_token"])
    # A difference of two noisy times may come out non-positive on a busy machine: then it is missing.
    assert r["decode_ratio_vs_hf"] is None or _ok(r["decode_ratio_vs_hf"])
    assert r["same_tokens"] is True  # greedy decoding on the same weights


@pytest.mark.slow
def test_int8_suite_reports_every_variant_or_why_not(report):
    (r,) = report["int8"]
    names = [v["name"] for v in r["variants"]]
    fp32 = r["variants"][0]
    assert names[0] == "fp32"
    for v in r["variants"]:
        assert _ok(v["forward_ms"]) and _ok(v["size_mb"]) and _ok(v["forward_speedup_vs_fp32"])
        # every ratio is taken against the fp32 row: a fraction for size, a speed-up for times
        assert v["size_ratio_vs_fp32"] == pytest.approx(v["size_mb"] / fp32["size_mb"]), v
        assert v["forward_speedup_vs_fp32"] == pytest.approx(fp32["forward_ms"] / v["forward_ms"]), v
        assert v["decode_speedup_vs_fp32"] == pytest.approx(fp32["decode_ms_per_token"] / v["decode_ms_per_token"])
        if v["name"].startswith("int8"):
            assert v["size_ratio_vs_fp32"] < 0.8, v  # int8 blocks; the fp32 embedding is a large share here
    for scheme in ("int8 w8a8", "int8 w8"):
        assert scheme in names or scheme in r["skipped"] or "torchao" in r["skipped"]
    assert "executorch" in r["skipped"]  # quick: no lowering


@pytest.mark.slow
def test_sharing_suite_has_the_paper_table(report):
    (r,) = report["sharing"]
    v = {x["name"]: x for x in r["variants"]}
    assert list(v) == ["unshared", "immediate", "repeat_all", "deeper"]
    n = tiny_config().n_layers
    assert [v[k]["executed_layers"] for k in v] == [n, 2 * n, 2 * n, 2 * n]
    assert v["immediate"]["params"] == v["unshared"]["params"] < v["deeper"]["params"]
    for x in v.values():
        assert _ok(x["ms_per_token"]) and _ok(x["latency_ratio_vs_unshared"])
        assert x["latency_ratio_vs_unshared"] == pytest.approx(x["ms_per_token"] / v["unshared"]["ms_per_token"])
    ms = {k: x["ms_per_token"] for k, x in v.items()}
    assert r["immediate_vs_repeat_all"] == pytest.approx(ms["immediate"] / ms["repeat_all"])
    assert v["deeper"]["paper_ms"] == 29.0 and v["deeper"]["paper_ratio"] == pytest.approx(29.0 / 15.6)


def test_json_is_strict(tmp_path):
    bad = {"schema": 1, "extra": [float("nan"), {"x": float("inf")}, (1.5, -float("inf"))]}
    path = write_json(bad, tmp_path / "sub" / "b.json")
    back = json.loads(path.read_text())  # strict: no NaN literals
    assert back == {"schema": 1, "extra": [None, {"x": None}, [1.5, None]]}


def test_twin_shares_the_blocks_and_runs_the_shared_order():
    cfg = tiny_config()
    base = MobileLLM(cfg).eval()
    shared_cfg = cfg.replace(layer_sharing="immediate")
    t = twin(base, shared_cfg)
    assert t.layers[0].mlp.up_proj.weight.data_ptr() == base.layers[0].mlp.up_proj.weight.data_ptr()
    ref = MobileLLM(shared_cfg).eval()
    ref.load_state_dict(base.state_dict())
    x = torch.randint(0, cfg.vocab_size, (1, 10))
    torch.testing.assert_close(t(x), ref(x))
    with pytest.raises(ValueError, match="only in layer sharing"):
        twin(base, cfg.replace(n_layers=6))


def test_measure_takes_turns_and_rotates():
    calls = []

    def timer(name):
        return lambda: calls.append(name) or 1.0

    times = measure({"a": timer("a"), "b": timer("b")}, repeats=3, warmup=1)
    assert times == {"a": [1.0] * 3, "b": [1.0] * 3}
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_a_model_without_a_llama_twin_skips_the_peer():
    r = bench_train(tiny_config(ffn_type="relu", ffn_hidden_dim=64), QUICK)
    assert row_of(r["variants"], "hf") is None and "swiglu" in r["skipped"]["hf"] and r["ratio_vs_hf"] is None
    assert _ok(row_of(r["variants"], "ours")["tokens_per_s"])


@pytest.mark.slow
def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--quick",
                "--suite",
                "train",
                "decode",
                "--config",
                "teach-micro",
                "--repeats",
                "1",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "train teach-micro" in printed and "decode teach-micro" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert report["settings"]["suites"] == ["train", "decode"] and "int8" not in report
    assert report["train"][0]["config"] == "teach-micro" and _ok(report["train"][0]["ratio_vs_hf"])
    assert report["machine"]["torch"] == torch.__version__


def test_cli_rejects_unknown_suite_and_config(tmp_path, capsys):
    for bad in (["--suite", "speed"], ["--config", "gpt-5"]):
        with pytest.raises(SystemExit) as e:
            main(["bench", *bad])
        assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["bench", "--repeats", "0", "--json", str(tmp_path / "b.json")]) == 2
    assert "repeats (0) must be a positive integer" in capsys.readouterr().err
    assert main(["bench", "--quick", "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["bench", "--suite", "pte", "--pte-blocks", "0", "--json", str(tmp_path / "b.json")]) == 2
    assert "--pte-blocks (0) must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "--suite", "pte", "--pte-quants", "int4"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown suite 'speed'"):
        run_bench(["speed"])
    with pytest.raises(ValueError, match="unknown config 'gpt-5'"):
        run_bench(["train"], ["gpt-5"])


def test_block_bytes_and_caches():
    from mobilellm.config import get_config
    from mobilellm.course.bench import block_bytes, cpu_caches, pte_group_size

    cfg = get_config("mobilellm-125m")
    n = 576 * 576 * 2 + 192 * 576 * 2 + 3 * 576 * 1536  # q, o, k, v, gate/up/down
    assert block_bytes(cfg, "fp32", 32) == 4 * n + 8 * 576
    assert block_bytes(cfg, "int8", 32) < block_bytes(cfg, "fp32", 32) / 3.9
    assert block_bytes(cfg, "8da4w", 32) == n // 2 + 2 * n // 32 + 8 * 576
    assert pte_group_size(cfg) == 32 and pte_group_size(get_config("teach-micro")) is None  # width 48
    assert block_bytes(cfg, "8da4w", 0) == n // 2 + 4 * (3 * 576 + 2 * 192 + 2 * 1536) + 8 * 576
    caches = cpu_caches()
    assert all(c["bytes"] > 0 and c["level"] >= 1 for c in caches)


@pytest.mark.slow
def test_pte_suite_on_a_tiny_model(tmp_path):
    pytest.importorskip("executorch")
    from mobilellm.course.bench import bench_pte, format_report

    # 48 wide: no 8da4w group fits (XNNPACK's int4 needs multiples of 32), and fp32 must not care
    cfg = tiny_config(vocab_size=128, dim=48, n_layers=1, ffn_hidden_dim=64, max_seq_len=64)
    # fp32 only: five lowerings (four models and the peer), not fifteen (8da4w: test_executorch_program)
    from mobilellm.course.bench.peers import optimum_python

    r = bench_pte(cfg, BenchSettings(repeats=2, warmup=1, progress=False), quants=("fp32",), programs=tmp_path)
    optimum = optimum_python() is not None  # optimum-executorch's peer, where its environment exists
    llama_cpp = importlib.util.find_spec("llama_cpp") is not None  # llama.cpp's, where it is installed
    absent = {
        "optimum_executorch": "no optimum-executorch environment (make optimum-venv)",
        "llama_cpp": "no llama-cpp-python (make llama-cpp)",
    }
    assert r["skipped"] == {
        k: v for k, v in absent.items() if not {"optimum_executorch": optimum, "llama_cpp": llama_cpp}[k]
    }, r["skipped"]
    assert r["group_size_8da4w"] is None
    rows = {(v["name"], v["quant"]): v for v in r["variants"]}
    assert len(rows) == 6 + optimum + llama_cpp  # four models, the peers and the control
    assert rows["deeper", "fp32"]["executed_layers"] == 2 == rows["immediate", "fp32"]["executed_layers"]
    for v in rows.values():
        assert _ok(v["ms_per_token"]) and _ok(v["eager_fp32_ms_per_token"]) and v["bytes"] > 0
    assert rows["unshared", "fp32"]["latency_ratio_vs_unshared"] == 1.0
    # a shared block is stored once: sharing adds less than half a block (the program's extra steps), depth a block
    unshared, block = rows["unshared", "fp32"]["bytes"], r["block_bytes"]["fp32"]
    assert rows["immediate", "fp32"]["bytes"] - unshared < block / 2
    assert rows["deeper", "fp32"]["bytes"] - unshared > block
    # ExecuTorch's own Llama export of the unshared weights, timed in the same rounds
    peer = rows["executorch_llama", "fp32"]
    assert peer["executed_layers"] == 1 and _ok(peer["ms_per_token"]) and peer["bytes"] > 0
    # the programs' census: both delegate to XNNPACK; sharing runs more of the same calls
    assert peer["delegate_calls"] >= 1 and rows["unshared", "fp32"]["delegate_calls"] >= 1
    assert rows["immediate", "fp32"]["kernel_calls"] > rows["unshared", "fp32"]["kernel_calls"]
    cmp = r["vs_executorch_llama"]["fp32"]
    assert cmp["speed_ratio"] == pytest.approx(peer["ms_per_token"] / rows["unshared", "fp32"]["ms_per_token"])
    assert cmp["size_ratio"] == pytest.approx(unshared / peer["bytes"])
    assert cmp["rounds"] == 2 == len(peer["ms_rounds"]) and 0 <= cmp["ours_faster_rounds"] <= 2
    # the control: the same file loaded twice, the same bytes
    again = r["vs_unshared_again"]["fp32"]
    assert again["size_ratio"] == 1.0 and _ok(again["speed_ratio"]) and again["rounds"] == 2
    assert set(r["repeat_cost"]["fp32"]) == {"immediate", "repeat_all"}
    assert bool(r["vs_optimum_executorch"]) == optimum
    if optimum:
        o = rows["optimum_executorch", "fp32"]
        assert o["executed_layers"] == 1 and _ok(o["ms_per_token"]) and o["bytes"] > 0
    assert bool(r["vs_llama_cpp"]) == llama_cpp and r["threads"] >= 1
    if llama_cpp:
        g = rows["llama_cpp", "fp32"]
        assert g["gguf_type"] == "f32" and g["threads"] == r["threads"] and _ok(g["ms_per_token"])
        assert g["bytes"] > 4 * param_count(cfg)["total"]  # fp32 weights, and the header and names
    machine = {
        "cpu": "x",
        "cpus_available": 1,
        "torch": "t",
        "torch_threads": 1,
        "transformers": None,
        "git_commit": None,
        "date": "d",
        "load_average": [],
    }
    text = format_report({"machine": machine, "ceilings": {}, "pte": [r]})
    assert "pte custom" in text and "ExecuTorch's Llama export" in text and "re-run layer" in text
    assert "calls per token (fp32; XNNPACK subgraphs + the runtime's own kernels): unshared " in text
    assert "the same program loaded again (the noise floor)" in text
    assert "memory taken by loading each fp32 program and a first call, MiB (file size): unshared " in text
    if Path("/proc/self/statm").is_file():  # Linux: how much loading each program took in memory
        assert all(isinstance(v["resident_bytes"], int) for v in rows.values())
    # run again without the peers: our four programs come from the folder, lowered by the run above
    again = bench_pte(
        cfg, BenchSettings(repeats=2, warmup=1, progress=False), quants=("fp32",), peer=False, programs=tmp_path
    )
    kept = {v["name"]: v for v in again["variants"]}
    assert set(kept) == {"unshared", "immediate", "repeat_all", "deeper", "unshared_again"}
    assert all(kept[k]["lowered_earlier"] and kept[k]["lower_s"] == rows[k, "fp32"]["lower_s"] for k in kept)
    assert "peers" in again["skipped"] and again["programs_kept_in"] == str(tmp_path)
    assert _ok(again["vs_unshared_again"]["fp32"]["speed_ratio"]) and not again["vs_executorch_llama"]


def test_repeat_cost_and_pte_arguments():
    from mobilellm.course.bench import PAPER_SHARING_MS, bench_pte, repeat_cost
    from mobilellm.course.paper import IPHONE13_MS

    assert repeat_cost({"unshared": 10.0, "immediate": 10.0, "deeper": 20.0}) == 0.0  # a repeat is free
    assert repeat_cost({"unshared": 10.0, "immediate": 20.0, "deeper": 20.0}) == 1.0  # costs a fresh layer
    assert repeat_cost({"unshared": 10.0, "repeat_all": 15.0, "deeper": 20.0}, "repeat_all") == 0.5
    assert repeat_cost({"unshared": 10.0, "immediate": 12.0, "deeper": 9.0}) is None  # no depth cost: undefined
    assert repeat_cost({"unshared": 10.0, "deeper": 20.0}) is None
    paper = PAPER_SHARING_MS
    assert paper["immediate"] == IPHONE13_MS["MobileLLM-LS-125M"][2]
    assert repeat_cost(paper) == pytest.approx((16.0 - 15.6) / (29.0 - 15.6))
    s = BenchSettings(repeats=1, warmup=0, progress=False)
    with pytest.raises(ValueError, match="choose one or more of fp32, int8, 8da4w"):
        bench_pte("teach-micro", s, quants=("int4",))
    with pytest.raises(ValueError, match="n_layers"):
        bench_pte("mobilellm-125m", s, n_layers=0)


def test_kept_programs_are_reused_only_for_the_same_weights_and_format(tmp_path):
    from mobilellm.course.bench import lowered, program_fingerprint

    calls = []

    def export(model, path, quant, max_len, group_size):  # stands in for the minutes-long lowering
        calls.append((path.name, quant))
        path.write_bytes(b"program")
        return path

    torch.manual_seed(0)
    model = MobileLLM(tiny_config(n_layers=1))
    keep = tmp_path / "kept"
    path, lower_s, reused = lowered(export, model, "unshared", "int8", 32, 0, tmp_path, keep)
    assert path.parent == keep and path.is_file() and not reused and lower_s >= 0 and len(calls) == 1
    again = lowered(export, model, "unshared", "int8", 32, 0, tmp_path, keep)
    assert again == (path, lower_s, True) and len(calls) == 1  # the first lowering time, reported as such
    # another format, window or variant name, or other weights: lowered anew
    lowered(export, model, "unshared", "fp32", 32, 0, tmp_path, keep)
    lowered(export, model, "unshared", "int8", 48, 0, tmp_path, keep)
    lowered(export, model, "deeper", "int8", 32, 0, tmp_path, keep)
    before = program_fingerprint(model, "unshared", "int8", 32, 0)
    with torch.no_grad():
        model.norm.weight[0] += 1e-3
    assert program_fingerprint(model, "unshared", "int8", 32, 0) != before
    assert not lowered(export, model, "unshared", "int8", 32, 0, tmp_path, keep)[2] and len(calls) == 5
    # an export cut off before its note was written is lowered again, not trusted
    path.with_suffix(".json").unlink()
    torch.manual_seed(0)
    fresh = MobileLLM(tiny_config(n_layers=1))
    assert program_fingerprint(fresh, "unshared", "int8", 32, 0) == before
    path2, _, reused = lowered(export, fresh, "unshared", "int8", 32, 0, tmp_path, keep)
    assert path2 == path and not reused and len(calls) == 6
    # without a folder to keep them in, programs are written where asked and never reused
    assert lowered(export, model, "unshared", "int8", 32, 0, tmp_path, None)[1:] == (pytest.approx(0, abs=1), False)
    assert (tmp_path / "unshared-int8.pte").is_file() and len(calls) == 7
