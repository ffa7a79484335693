"""The README's generated sections: built from the results cache, never typed by hand."""

import dataclasses

import pytest

from mobilellm import ablations as A
from mobilellm import experiments as E
from mobilellm import readme as F
from mobilellm.experiments import Ablation, Recipe
from mobilellm.settings import Settings


@pytest.mark.slow  # trains four tiny runs
def test_ablation_table_and_readme_come_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "RESULTS_DIR", tmp_path / "results")
    recipe = Recipe(tokens=2 * 32 * 128, evals=1, eval_windows=2)
    cfg = A.SWIGLU.config("SwiGLU")
    ab = Ablation("tiny", (("relu", A.SWIGLU.config("ReLU (baseline)")), ("shared", cfg.replace(
        layer_sharing="immediate"))), recipe=recipe, seeds=(0, 1))
    later = Ablation("later", (("x", cfg),), recipe=dataclasses.replace(recipe, lr=1e-3), seeds=(0,))
    monkeypatch.setattr(F, "ABLATIONS", {"tiny": ab, "later": later})
    records = E.run_ablation(ab, Settings(progress=False))
    table = F.ablation_table()
    means = {s["label"]: s["mean"] for s in E.summarize(records)}
    best = min(means, key=means.get)
    row = next(line for line in table.splitlines() if f"| {best} |" in line)
    assert f"**{means[best]:.3f} ±" in row and "| 2 |" in row  # two seeds, the lower mean in bold
    assert "| tiny | relu | 132,432 | 3 |" in table and "| shared | 132,432 | 6 |" in table
    assert table.endswith("Not run yet: later.")
    assert "| − first variant, paired by seed |" in table.splitlines()[0]
    shared_row = next(line for line in table.splitlines() if "| shared |" in line)
    assert " on 2/2 seeds, mean " in shared_row or "mixed (" in shared_row  # the paired verdict, per row

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- notebook-map:start -->\nstale map\n<!-- notebook-map:end -->\n"
                      "<!-- budget:start -->\nstale budget\n<!-- budget:end -->\n"
                      "<!-- ablations:start -->\nstale table\n<!-- ablations:end -->\noutro\n")
    monkeypatch.setattr(F, "README", readme)
    monkeypatch.setattr(F, "TIMES_FILE", tmp_path / "times.json")
    monkeypatch.setattr(F, "CURRICULUM", {})
    F.update_readme()
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro") and text.endswith("outro\n")
    assert table in text and "| notebook | builds |" in text
    # the training budget: the 4 cached runs of "tiny", their wall times summed; "later" is missing
    hours = sum(r.wall_time for r in records) / 3600
    assert f"retrains the 4 runs the notebooks train: their recorded wall times sum to {hours:.1f} hours" in text
