"""The evidence readings (best depth, the repetition test) on made-up runs, and re-deriving a cached run."""

import pytest

from mobilellm.course import ablations as A
from mobilellm.course import evidence as V
from mobilellm.course import experiments as E
from mobilellm.course.settings import Settings

SETTINGS = Settings(progress=False)


def _record(label: str, seed: int, loss: float, params: int = 100) -> E.RunRecord:
    return E.RunRecord(label, {}, {}, seed, "fp", params, 1000, loss, loss, [], [], 1.0)


@pytest.fixture
def fake_cache(monkeypatch):
    """``cached_runs`` answers from a dict {ablation name: records}; one pass per 1000 tokens of the whole text."""
    cache: dict[str, list[E.RunRecord]] = {}
    monkeypatch.setattr(E, "cached_runs", lambda ab, settings=None: (cache[ab.name], []))
    monkeypatch.setattr(E, "passes", lambda recipe: recipe.tokens / 1000 * recipe.train_docs_every)
    return cache


def test_best_depth_names_the_winner_and_pairs_it_against_each_shape(fake_cache):
    small, large = A.DEPTH_TREND[0], A.DEPTH_TREND[-1]
    # small budget: the wide shape wins on every seed; large: the middle one wins on two seeds of three
    fake_cache[small.name] = [
        _record(lab, s, loss + 0.01 * s)
        for s in range(3)
        for lab, loss in (("2×56", 3.0), ("5×40", 3.1), ("8×32", 3.2))
    ]
    large_losses = {"2×56": (2.50, 2.50, 2.40), "5×40": (2.45, 2.45, 2.45), "8×32": (2.60, 2.60, 2.60)}
    fake_cache[large.name] = [_record(lab, s, ls[s]) for lab, ls in large_losses.items() for s in range(3)]
    rows = V.best_depth([small, large], ("2×56", "5×40", "8×32"), SETTINGS)
    assert [r.winner for r in rows] == ["2×56", "5×40"]
    assert rows[0].wins_on == 3 and rows[1].wins_on == 2 and rows[1].seeds == 3
    assert rows[0].against["8×32"].verdict == "worse" and rows[0].against["8×32"].mean == pytest.approx(0.2)
    assert rows[1].against["2×56"].verdict == "mixed"  # 2×56 beats 5×40 on seed 2
    mean, low, high = rows[0].relative["2×56"]
    assert mean == pytest.approx(-0.1) and low == pytest.approx(high)  # the same on every seed: no spread
    assert rows[1].tokens_per_param == pytest.approx(large.recipe.tokens / 100)
    assert rows[1].passes == pytest.approx(large.recipe.tokens / 1000)


def test_repetition_test_pairs_the_shift_by_seed(fake_cache):
    full, part = A.DEPTH_TREND[2], A.DEPTH_REPEAT
    fake_cache[full.name] = [_record("2×56", s, 3.0) for s in range(3)] + [
        _record("8×32", s, 3.0 + d) for s, d in enumerate((0.05, 0.06, 0.07))
    ]
    # on the fraction: the deep model's deficit shrinks by 0.02 on every seed, give or take 0.001
    fake_cache[part.name] = [_record("2×56", s, 3.3) for s in range(3)] + [
        _record("8×32", s, 3.3 + d) for s, d in enumerate((0.03, 0.041, 0.049))
    ]
    t = V.repetition_test(full, part, "2×56", "8×32", SETTINGS)
    assert t.full.paired.mean == pytest.approx(0.06) and t.repeated.paired.mean == pytest.approx(0.04)
    assert t.shift.diffs == pytest.approx((-0.02, -0.019, -0.021)) and t.shift.verdict == "better"
    assert t.factor == pytest.approx(3.0)  # every third play: three times the passes
    assert "repetition itself moves the difference (better on 3/3 seeds)" in t.reading(slope=-0.07)


def test_a_shift_whose_interval_holds_zero_is_read_as_not_explaining(fake_cache):
    full, part = A.EMBEDDING_TREND[2], A.EMBEDDING_REPEAT
    fake_cache[full.name] = [_record(lab, s, 3.0) for lab in ("untied", "tied") for s in range(3)]
    fake_cache[part.name] = [_record("untied", s, 3.0) for s in range(3)] + [
        _record("tied", s, 3.0 + d) for s, d in enumerate((0.01, -0.01, 0.002))
    ]
    t = V.repetition_test(full, part, "untied", "tied", SETTINGS)
    assert t.shift.verdict == "mixed" and t.shift.low < -0.01 < t.shift.high
    # a gentle trend predicts a shift inside the interval: three seeds cannot tell
    assert "cannot tell whether repetition explains the trend" in t.reading(slope=-0.02)
    # a steep one predicts -0.095 for 3x, outside it: repetition does not explain that trend
    assert "repetition does not explain the trend" in t.reading(slope=-0.2)


@pytest.mark.slow  # trains one run of ~620k tokens (~15 s)
def test_a_cached_run_is_rederived_within_the_tolerance():
    ab = A.ABLATIONS["depth-trend-0.25x"]
    before = sorted(p.name for p in E.output_dirs(SETTINGS)[0].iterdir())
    (check,) = V.verify(ab, SETTINGS, ["2×56"], [1])
    assert (check.label, check.seed) == ("2×56", 1) and check.seconds > 1  # it trained, it did not read the cache
    assert check.agrees, f"stored {check.stored}, retrained {check.retrained}"
    assert sorted(p.name for p in E.output_dirs(SETTINGS)[0].iterdir()) == before  # the cache was not written


def test_verify_refuses_a_run_the_cache_lacks():
    with pytest.raises(ValueError, match="no cached run of depth-trend-0.25x"):
        next(V.verify(A.ABLATIONS["depth-trend-0.25x"], SETTINGS, ["2×56"], [7]))
