import dataclasses
import json
import time

import pytest

from mobilellm.course import ablations as A
from mobilellm.course import experiments as E
from mobilellm.course.experiments import Ablation, Recipe, RunRecord
from mobilellm.course.settings import Settings


def record(label, loss, seed=0):
    return RunRecord(
        label=label,
        config={},
        recipe={},
        seed=seed,
        data_fingerprint="x",
        params=100,
        tokens=1000,
        final_val_loss=loss,
        best_val_loss=loss,
        val_curve=[(1, loss)],
        train_curve=[],
        wall_time=1.0,
    )


def test_compare_pairs_runs_by_seed():
    recs = [record("a", v, i) for i, v in enumerate([3.00, 3.02, 3.01])]
    recs += [record("b", v, i) for i, v in enumerate([2.90, 2.91, 2.92])]
    c = E.compare(recs, "a", "b")
    assert c.diffs == pytest.approx((-0.10, -0.11, -0.09)) and c.seeds == (0, 1, 2)
    assert c.verdict == "better" and c.agree == 3 and c.high < 0
    assert c.text().startswith("better on 3/3 seeds, mean -0.100 [")
    # the seeds disagree in sign: mixed, whatever the means
    recs += [record("c", v, i) for i, v in enumerate([3.03, 2.99, 3.00])]
    assert E.compare(recs, "a", "c").verdict == "mixed"
    assert E.compare(recs[:1] + recs[3:4], "a", "b").verdict == "one seed"
    with pytest.raises(ValueError, match="no runs labelled 'z'"):
        E.compare(recs, "a", "z")


def test_run_keys_change_with_what_matters():
    cfg, recipe = A.SWIGLU.config("SwiGLU"), Recipe()
    key = E.run_key(cfg, recipe, "data", 0)
    assert key == E.run_key(cfg, Recipe(), "data", 0)
    assert key != E.run_key(cfg, recipe, "data", 1)
    assert key != E.run_key(cfg.replace(n_layers=4), recipe, "data", 0)
    assert key != E.run_key(cfg, dataclasses.replace(recipe, lr=2e-2), "data", 0)
    assert key != E.run_key(cfg, recipe, "other-corpus", 0)


def test_ablations_compare_at_equal_parameters():
    from mobilellm.accounting import param_count

    for ab in (A.SWIGLU, A.DEPTH, A.GQA):
        counts = [param_count(c)["total"] for _, c in ab.variants]
        assert max(counts) / min(counts) < 1.03, ab.name
    # the variant shared by notebooks 02 and 03 is one config, so its runs are trained once
    assert A.DEPTH.config("3×48") == A.SWIGLU.config("SwiGLU")
    assert A.DEPTH_TREND[1].recipe == A.DEPTH.recipe and A.DEPTH_TREND[1].name == "depth-trend-1x"


def test_ablation_validation():
    cfg = A.SWIGLU.config("SwiGLU")
    with pytest.raises(ValueError, match="duplicate labels"):
        Ablation("x", (("a", cfg), ("a", cfg)))
    with pytest.raises(ValueError, match="vocab_size 512"):
        Ablation("x", (("a", cfg.replace(vocab_size=100)),))
    with pytest.raises(ValueError, match="no variant 'z'"):
        A.SWIGLU.config("z")
    with pytest.raises(ValueError, match="unknown ablation"):
        A.get_ablation("nope")


@pytest.mark.slow
def test_runner_trains_once_then_reads_the_cache(tmp_path):
    ab = Ablation("tiny", (("micro", A.SWIGLU.config("SwiGLU")),), recipe=Recipe(tokens=4 * 32 * 128))
    quick = Settings(quick=True, command="pytest", progress=False)
    first = E.run_ablation(ab, quick, results_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(first) == 1 and len(files) == 2  # the JSON and the seed-0 weights
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert stored["provenance"]["command"] == "pytest" and stored["tokens"] == 12 * 32 * 128
    # where a record lives is known to the record, but not stored in it (no machine paths in results)
    assert "path" not in stored and first[0].path == next(tmp_path.glob("*.json"))
    again = E.run_ablation(ab, quick.replace(command="other"), results_dir=tmp_path)
    assert again[0].path == first[0].path
    assert again[0].final_val_loss == first[0].final_val_loss and again[0].wall_time == first[0].wall_time
    model = E.load_model(again[0])
    assert sum(p.numel() for p in model.parameters()) == first[0].params


def test_cached_measurement_measures_once_per_key(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return {"ms": 1.5 * len(calls)}

    cached = Settings()
    first = E.cached_measurement("probe", {"config": "a"}, measure, cached, results_dir=tmp_path)
    again = E.cached_measurement("probe", {"config": "a"}, measure, cached, results_dir=tmp_path)
    assert (first["cached"], again["cached"]) == (False, True) and len(calls) == 1
    assert again["result"] == first["result"] == {"ms": 1.5} and "commit" in again["provenance"]
    other = E.cached_measurement("probe", {"config": "b"}, measure, cached, results_dir=tmp_path)
    assert other["result"] == {"ms": 3.0} and other["path"] != first["path"]
    # FRESH redoes what was measured before the FRESH session began, once: a second notebook asking
    # for the same result in the same session gets the fresh one
    fresh_before = Settings(fresh=True, fresh_since=0.0)
    assert E.cached_measurement("probe", {"config": "a"}, measure, fresh_before, results_dir=tmp_path)["cached"]
    fresh_now = Settings(fresh=True, fresh_since=time.time() + 60)
    forced = E.cached_measurement("probe", {"config": "a"}, measure, fresh_now, results_dir=tmp_path)
    assert forced["result"] == {"ms": 4.5} and not forced["cached"] and len(calls) == 3


def test_seeds_can_be_limited_for_a_faster_fresh_run():
    assert E.seeds_of(A.SWIGLU, Settings()) == (0, 1, 2)
    one = Settings(seeds=1)
    assert E.seeds_of(A.SWIGLU, one) == (0,) and E.seeds_of(A.SHARING_ORDERS, one) == (0,)
    assert E.seeds_of(A.SWIGLU, Settings(quick=True)) == (0,)
    with pytest.raises(ValueError, match=r"seeds \(0\) must be a positive integer"):
        Settings(seeds=0)


def test_scaled_ablations_keep_the_shapes_and_the_tokens_per_parameter():
    from mobilellm.accounting import param_count

    big = A.scaled(A.SHARING, 4)
    assert big.name == "sharing-x4" and [lab for lab, _ in big.variants] == [lab for lab, _ in A.SHARING.variants]
    for (_, small), (_, wide) in zip(A.SHARING.variants, big.variants, strict=True):
        assert (wide.dim, wide.head_dim, wide.execution_order) == (4 * small.dim, small.head_dim, small.execution_order)
        assert wide.n_heads // wide.n_kv_heads == small.n_heads // small.n_kv_heads
    ratio = lambda ab: ab.recipe.tokens / param_count(ab.variants[0][1])["total"]  # noqa: E731
    assert ratio(big) == pytest.approx(ratio(A.SHARING), rel=1e-3)
    assert A.scaled(A.SWIGLU, 1) is A.SWIGLU
    assert A.scaled(A.SWIGLU, 2, corpus="tinystories").recipe.corpus == "tinystories"
    with pytest.warns(UserWarning, match="depth at 4x: variants of equal size at 1x now differ by up to 41%"):
        A.scaled(A.DEPTH, 4)  # embeddings grow linearly with width, blocks quadratically
    with pytest.raises(ValueError, match="width .0. must be a positive integer"):
        A.scaled(A.SWIGLU, 0)


def test_an_exercise_costs_its_solution_time_or_the_training_it_reads(tmp_path, monkeypatch):
    """The runner times each solution from nbclient's timestamps; a solution that reads cached runs costs
    their recorded training time (logged by run_ablation / train_mine while the cell ran)."""
    import datetime
    import json as json_

    import nbformat

    from mobilellm.course import notebooks as N

    def solution(source, start, end):
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = ["solution"]
        cell.metadata["execution"] = {
            "iopub.execute_input": f"2026-12-07T10:00:{start:02d}.000000Z",
            "shell.execute_reply": f"2026-12-07T10:00:{end:02d}.000000Z",
        }
        return cell

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("## Exercises\n1. a\n2. b"),
        nbformat.v4.new_markdown_cell("**Solution 1.** Quick."),
        solution("x = 1", 0, 2),
        solution("y = 2", 2, 3),
        nbformat.v4.new_markdown_cell("**Solution 2.** Reads cached runs."),
        solution("runs = run_ablation(ab)", 3, 4),
    ]
    t0 = datetime.datetime(2026, 12, 7, 10, 0, 3, tzinfo=datetime.timezone.utc).timestamp()
    costs = [(t0 + 0.5, 600.0), (t0 - 60, 9999.0)]  # the second was logged outside any solution
    assert N.solution_seconds(nb, costs) == {"1": 3.0, "2": 600.0}
    log = tmp_path / "costs.jsonl"
    monkeypatch.setenv(E.COST_LOG, str(log))
    E.log_cost(12.5)
    assert [s for _, s in N._read_costs(log)] == [12.5]
    times = tmp_path / "times.json"
    times.write_text(json_.dumps({"07_roadmap": {"seconds": 1.0, "solutions": {"1": 3.0, "2": 600.0, "3": 0.0}}}))
    monkeypatch.setattr(N, "TIMES_FILE", times)
    assert (N.exercise_cost("07_roadmap", 1), N.exercise_cost("07_roadmap", 2)) == ("~3 s", "~10 min")
    assert N.exercise_cost("07_roadmap", 3) == "~1 s"  # measured, and instant
    assert N.exercise_cost("07_roadmap", 4) == "time not measured yet"


def test_the_quick_mode_folder_is_removed_when_the_process_exits():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from mobilellm.course import experiments as E; from mobilellm.course.settings import Settings; "
        "d = E.output_dirs(Settings(quick=True))[0].parent; d.mkdir(exist_ok=True); print(d)"
    )
    folder = Path(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    )
    assert folder.name.startswith("mobilellm-quick-") and not folder.exists()
