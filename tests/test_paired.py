"""The paired verdict rule and the budget trend, on hand-made numbers."""

import math

import pytest

from mobilellm.course.paired import log_trend, paired, t_interval


def test_t_interval_matches_the_textbook():
    # mean 2, sd 1, n 4: half-width t(0.975, 3) * 1 / 2 = 3.1824 / 2
    mean, low, high = t_interval([1.0, 2.0, 3.0, 2.0 + math.sqrt(0)])
    assert mean == pytest.approx(2.0)
    sd = math.sqrt(((1 - 2) ** 2 + 0 + 1 + 0) / 3)
    assert high - mean == pytest.approx(3.182446 * sd / 2, rel=1e-5)
    assert t_interval([5.0]) == (5.0, 5.0, 5.0)


def test_consistent_worse_is_worse_when_the_interval_excludes_zero():
    # the sharing ablation's per-seed differences: +0.027 / +0.018 / +0.015
    p = paired("none", "shared", {0: 3.0, 1: 3.0, 2: 3.0}, {0: 3.027, 1: 3.018, 2: 3.015})
    assert p.verdict == "worse" and p.agree == 3
    assert p.low == pytest.approx(0.020 - 4.302653 * 0.006245 / math.sqrt(3), abs=2e-4) and p.low > 0
    assert p.text() == "worse on 3/3 seeds, mean +0.020 [+0.004, +0.036]"


def test_same_sign_on_every_seed_with_a_wide_interval_is_leaning_not_noise():
    # tying's per-seed differences: +0.023 / +0.038 / +0.058 (interval reaches below zero)
    p = paired("untied", "tied", {0: 3.0, 1: 3.0, 2: 3.0}, {0: 3.023, 1: 3.038, 2: 3.058})
    assert p.low < 0 < p.high
    assert p.verdict == "leaning worse" and p.agree == 3
    assert "noise" not in p.text() and p.text().startswith("leaning worse on 3/3 seeds")


def test_mixed_signs_and_missing_seeds():
    p = paired("a", "b", {0: 3.0, 1: 3.0, 2: 3.0, 3: 3.0}, {0: 2.99, 1: 3.02, 2: 2.98})  # seed 3 unpaired
    assert p.seeds == (0, 1, 2) and p.verdict == "mixed" and p.agree == 2
    assert p.text().startswith("mixed (better on 2/3 seeds), mean -0.003 [")
    one = paired("a", "b", {0: 3.0}, {0: 3.1})
    assert one.verdict == "one seed" and one.text() == "one seed only: +0.100 (no interval)"
    with pytest.raises(ValueError, match="share no seed"):
        paired("a", "b", {0: 3.0}, {1: 3.0})


def test_log_trend_recovers_a_line_and_widens_away_from_the_data():
    budgets = [5, 5, 20, 20, 60, 60]
    diffs = [0.10 - 0.05 * math.log10(b) + e for b, e in zip(budgets, [0.002, -0.002] * 3, strict=True)]
    t = log_trend(budgets, diffs)
    assert t.slope == pytest.approx(-0.05, abs=1e-9) and t.at(1) == pytest.approx(0.10, abs=1e-9)
    near, far = t.band(20), t.band(2000)
    assert far[1] - far[0] > near[1] - near[0] > 0
    assert near[0] < t.at(20) < near[1]
    with pytest.raises(ValueError, match="at least 3 differences at 2 or more budgets"):
        log_trend([5, 5], [0.1, 0.2])
