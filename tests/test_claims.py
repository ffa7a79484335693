"""The verdict table's rule, on hand-made numbers, and the table itself from the cache."""

import json
import math

import pytest

from mobilellm.course import claims, paths
from mobilellm.course.paired import log_trend, paired


def p(*diffs):
    return paired("ref", "var", {i: 3.0 for i in range(len(diffs))}, {i: 3.0 + d for i, d in enumerate(diffs)})


def shrinking(start=0.12, per_decade=-0.05):
    budgets = [5, 5, 5, 20, 20, 20, 60, 60, 60]
    noise = [0.004, -0.003, -0.001] * 3
    return log_trend(budgets, [start + per_decade * math.log10(b) + e for b, e in zip(budgets, noise, strict=True)])


def flat():
    budgets = [5, 5, 5, 20, 20, 20, 60, 60, 60]
    return log_trend(budgets, [0.02 + e for e in [0.006, -0.004, -0.002, 0.005, -0.006, 0.001, -0.003, 0.004, 0.0]])


def test_the_paper_s_direction_with_an_interval_clear_of_zero_reproduces():
    assert claims.classify(-1, p(-0.03, -0.02, -0.04), None) == "reproduces"
    assert claims.classify(+1, p(0.03, 0.02, 0.04), None) == "reproduces"


def test_every_seed_the_paper_s_way_but_a_wide_interval_leans():
    assert claims.classify(-1, p(-0.01, -0.05, -0.002), None) == "leans the paper's way"


def test_seeds_that_disagree_are_inside_the_noise_unless_the_claim_is_no_difference():
    assert claims.classify(-1, p(0.01, -0.02, 0.005), None) == "inside the noise"
    assert claims.classify(0, p(0.01, -0.02, 0.005), None) == "reproduces"


def test_reversals_are_split_by_their_budget_trend():
    worse = p(0.09, 0.08, 0.10)
    assert claims.classify(-1, worse, shrinking()) == "reverses here, trends toward the paper"
    assert claims.classify(-1, worse, flat()) == "reverses, no trend"
    assert claims.classify(-1, worse, None) == "reverses, no trend measured"
    # a difference that grows with budget is not a trend toward the paper
    assert claims.classify(-1, worse, shrinking(per_decade=+0.05)) == "reverses, no trend"


def test_one_seed_is_not_classified():
    assert claims.classify(-1, p(0.05), None).startswith("one seed")


def test_slope_interval_contains_the_slope():
    t = shrinking()
    low, high = t.slope_interval()
    assert low < t.slope < high < 0


@pytest.mark.slow  # reads the results cache and tokenizes the corpus
def test_each_claims_row_states_its_own_paired_difference_and_class():
    from mobilellm.course import experiments as E

    lines = claims.verdict_table().splitlines()
    assert lines[0].startswith("| claim | paper | ours")
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == len(claims.claims())
    for c, row in zip(claims.claims(), rows, strict=True):  # recomputed from the cache, row by row
        found, _ = E.cached_runs(c.ablation)
        p = E.compare(found, c.reference, c.variant)
        assert row.startswith(f"| {c.name} | {c.paper} |"), row[:80]
        assert f"{c.variant} − {c.reference}: {p.text()}" in row
        assert row.endswith(f"**{claims.classify(c.expect, p, claims._trend(c)[0])}** |")


def test_the_sharing_cost_is_read_from_the_bench_report(tmp_path, monkeypatch):
    from mobilellm.course import claims as C

    monkeypatch.setattr(paths, "RESULTS_DIR", tmp_path)
    assert "run `make bench`" in C._sharing_cost()  # no report: says how to make one, invents nothing
    rows = [{"name": "unshared", "ms_per_token": 10.0}, {"name": "immediate", "ms_per_token": 13.0}]
    (tmp_path / "bench.json").write_text(json.dumps({"sharing": [{"variants": rows}]}))
    assert "per token ×1.30 on this CPU" in C._sharing_cost() and "iPhone: ×1.03" in C._sharing_cost()
