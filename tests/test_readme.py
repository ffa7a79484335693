"""The README's generated sections: built from the results cache, never typed by hand."""

import dataclasses
import json
import re

import pytest

from mobilellm.course import ablations as A
from mobilellm.course import experiments as E
from mobilellm.course import paths
from mobilellm.course import readme as F
from mobilellm.course.experiments import Ablation, Recipe
from mobilellm.course.settings import Settings


@pytest.mark.slow  # trains four tiny runs
def test_ablation_table_and_readme_come_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS_DIR", tmp_path / "results")
    recipe = Recipe(tokens=2 * 32 * 128, evals=1, eval_windows=2)
    cfg = A.SWIGLU.config("SwiGLU")
    ab = Ablation(
        "tiny",
        (("relu", A.SWIGLU.config("ReLU (baseline)")), ("shared", cfg.replace(layer_sharing="immediate"))),
        recipe=recipe,
        seeds=(0, 1),
    )
    later = Ablation("later", (("x", cfg),), recipe=dataclasses.replace(recipe, lr=1e-3), seeds=(0,))
    monkeypatch.setattr(F, "ABLATIONS", {"tiny": ab, "later": later})
    records = E.run_ablation(ab, Settings(progress=False))
    table = F.ablation_table()
    means = {s["label"]: s["mean"] for s in E.summarize(records)}
    best = min(means, key=means.get)
    row = next(line for line in table.splitlines() if f"| {best} |" in line)
    assert f"**{means[best]:.3f} ±" in row and "| 2 |" in row  # two seeds, the lower mean in bold
    assert re.search(r"\| tiny \(\d+ min\) \| relu \| 132,432 \| 3 \|", table) and "| shared | 132,432 | 6 |" in table
    assert table.endswith("Not run yet: later.")
    assert "| − first variant, paired by seed |" in table.splitlines()[0]
    shared_row = next(line for line in table.splitlines() if "| shared |" in line)
    assert " on 2/2 seeds, mean " in shared_row or "mixed (" in shared_row  # the paired verdict, per row

    readme, reference = tmp_path / "README.md", tmp_path / "reference.md"
    readme.write_text(
        "intro\n<!-- notebook-map:start -->\nstale map\n<!-- notebook-map:end -->\n"
        "<!-- budget:start -->\nstale budget\n<!-- budget:end -->\noutro\n"
    )
    reference.write_text("# Ref\n<!-- ablations:start -->\nstale table\n<!-- ablations:end -->\nend\n")
    monkeypatch.setattr(F, "README", readme)
    monkeypatch.setattr(paths, "DOCS", {"reference": reference})
    monkeypatch.setattr(F, "TIMES_FILE", tmp_path / "times.json")
    monkeypatch.setattr(F, "CURRICULUM", {})
    F.update_readme()
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro") and text.endswith("outro\n")
    assert "| notebook | builds |" in text
    assert table in reference.read_text() and "stale" not in reference.read_text()  # a section in docs/ too
    # the training budget: the 4 cached runs of "tiny", their wall times summed; "later" is missing
    hours = sum(r.wall_time for r in records) / 3600
    assert f"retrains the 4 runs the notebooks train: their recorded wall times sum to {hours:.1f} hours" in text


def test_pte_latency_table_from_a_report(tmp_path):
    def row(name, ms, paper=None):
        return {
            "name": name,
            "quant": "int8",
            "ms_per_token": ms,
            "latency_ratio_vs_unshared": ms / 10.0,
            "paper_ms": paper,
            "paper_ratio": paper and paper / 15.6,
        }

    report = {
        "command": "python -m mobilellm bench --suite pte",
        "machine": {
            "cpu": "AMD EPYC",
            "cpus_available": 2,
            "load_average": [3.0],
            "load_average_after": [5.5],
            "git_commit": "abcdef0123",
        },
        "pte": [
            {
                "config": "mobilellm-125m at 2 blocks",
                "weights": "random (seeded); whatever",
                "new_tokens": 64,
                "prompt_len": 16,
                "repeats": 5,
                "variants": [
                    row("unshared", 10.0, 15.6),
                    row("immediate", 11.0, 16.0),
                    row("repeat_all", 12.0),
                    row("deeper", 20.0, 29.0),
                    row("executorch_llama", 13.0),
                    row("llama_cpp", 9.0),
                ],
                "repeat_cost": {"int8": {"immediate": 0.1, "repeat_all": 0.2}},
                "paper_repeat_cost": 0.03,
                "block_bytes": {"int8": 3 * 2**20},
                "block_fits_in": {"int8": ["L3"]},
            }
        ],
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    table = F.pte_latency_table(path)
    lines = table.splitlines()
    assert lines[0] == "| decode ms/token (x unshared) | .pte int8 | iPhone 13 (paper) |"
    assert "| immediate sharing (A A B B) | 11.00 (1.10×) | 16.0 (1.03×) |" in lines
    assert "| repeat-all-over (A B A B) | 12.00 (1.20×) | — |" in lines
    assert "| llama.cpp, unshared weights as GGUF F32 / Q8_0 / Q4_0 | 9.00 (0.90×) | — |" in lines
    assert "optimum" not in table  # a peer that did not run has no row
    assert "int8 0.10 (immediate), 0.20 (repeat-all)" in table and "give 0.03" in table and "3.0 MiB (L3)" in table
    assert "load 3.0 at the start, 5.5 at the end" in table
    assert "no `missing.json` yet" in F.pte_latency_table(tmp_path / "missing.json")


def _pte_run(quant, ms, load, commit):
    names = ("unshared", "immediate", "repeat_all", "deeper")
    variants = [
        {
            "name": n,
            "quant": quant,
            "ms_per_token": m,
            "latency_ratio_vs_unshared": m / ms[0],
            "paper_ms": None,
            "paper_ratio": None,
            "bytes": {"8da4w": 20, "int8": 30, "fp32": 100}[quant] * 10**6,
        }
        for n, m in zip(names, ms, strict=True)
    ]
    return {
        "command": f"bench --pte-quants {quant}",
        "machine": {
            "cpu": "AMD EPYC",
            "cpus_available": 2,
            "load_average": [load],
            "load_average_after": [load],
            "git_commit": commit,
        },
        "pte": [
            {
                "config": "mobilellm-125m at 30 blocks",
                "weights": "random (seeded); x",
                "stored_blocks": 30,
                "new_tokens": 64,
                "prompt_len": 16,
                "repeats": 5,
                "variants": variants,
                "repeat_cost": {quant: {"immediate": 0.5, "repeat_all": 0.6}},
                "paper_repeat_cost": 0.03,
                "block_bytes": {quant: 2**20},
                "block_fits_in": {quant: ["L3"]},
                "skipped": {},
            }
        ],
    }


def test_pte_latency_table_merges_one_run_per_format():
    from mobilellm.course.bench import merge_pte_reports

    merged = merge_pte_reports(
        [_pte_run("8da4w", [10, 15, 16, 20], 1.0, "aaaaaaa1"), _pte_run("fp32", [40, 50, 55, 80], 2.0, "bbbbbbb2")]
    )
    assert [r["quants"] for r in merged["runs"]] == [["8da4w"], ["fp32"]]
    assert set(merged["pte"][0]["repeat_cost"]) == {"8da4w", "fp32"} and len(merged["pte"][0]["variants"]) == 8
    table = F.pte_latency_table(report=merged)
    assert table.splitlines()[0] == "| decode ms/token (x unshared) | .pte 8da4w | .pte fp32 | iPhone 13 (paper) |"
    assert "| immediate sharing (A A B B) | 15.00 (1.50×) | 50.00 (1.25×) | — |" in table
    # sizes are the same whichever run measured them: each format against the fp32 run's programs
    assert "Unshared program size: 8da4w 20.0 MB (0.20× fp32), fp32 100.0 MB. " in table
    assert {v["size_ratio_vs_fp32"] for v in merged["pte"][0]["variants"] if v["quant"] == "8da4w"} == {0.2}
    # each format's run is credited with its own load, commit and command
    assert "8da4w: (load 1.0 at the start, 1.0 at the end), commit aaaaaaa, `bench --pte-quants 8da4w`" in table
    assert "fp32: (load 2.0 at the start, 2.0 at the end), commit bbbbbbb, `bench --pte-quants fp32`" in table
    with pytest.raises(ValueError, match="two pte reports time"):
        merge_pte_reports([_pte_run("fp32", [1, 2, 3, 4], 1.0, "a"), _pte_run("fp32", [1, 2, 3, 4], 1.0, "b")])
    other = _pte_run("int8", [1, 2, 3, 4], 1.0, "c")
    other["pte"][0]["stored_blocks"] = 2
    with pytest.raises(ValueError, match="different runs cannot be merged.*stored_blocks"):
        merge_pte_reports([_pte_run("fp32", [1, 2, 3, 4], 1.0, "a"), other])
    with pytest.raises(ValueError, match="no pte reports"):
        merge_pte_reports([])
