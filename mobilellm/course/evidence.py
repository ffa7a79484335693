"""The evidence behind the course's readings: budget trends with the passes over the data, the best
depth per budget, the repetition test, and re-deriving any cached run from its stored recipe."""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import experiments as E
from .experiments import Ablation
from .paired import Paired, Trend, log_trend, paired, t_interval
from .settings import Settings

# Retraining a cached run on this kind of CPU repeats its arithmetic; what may differ is the last bit
# of a reduction on another CPU (the pinned-trainer test allows 1e-6 relative per step). Over a few
# thousand steps such a bit can grow, so a re-derived loss must agree to 1e-3 nats: ten times below
# the smallest paired difference the course reads (~0.01 nats).
VERIFY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class BudgetPoint:
    """One budget of a trend: where it is, how often the data repeated, and the paired difference."""

    tokens_per_param: float
    passes: float  # times each training token was read
    paired: Paired


def budget_points(sweeps: list[Ablation], a: str, b: str, settings: Settings) -> tuple[list[BudgetPoint], list[str]]:
    """``b`` against ``a`` at each cached budget of ``sweeps``, and a line per sweep with runs missing."""
    runs, notes = E.trend_runs(sweeps, a, b, settings)
    recipes = {s.recipe.tokens: s.recipe for s in sweeps}
    points = [
        BudgetPoint(tokens / _params(recs, a), E.passes(recipes[tokens]), E.compare(recs, a, b))
        for tokens, recs in sorted(runs.items())
    ]
    return points, notes


def fit_trend(points: list[BudgetPoint]) -> Trend:
    """The budget trend through ``points``: a line through every seed's difference against log budget."""
    return log_trend(
        [pt.tokens_per_param for pt in points for _ in pt.paired.diffs], [d for pt in points for d in pt.paired.diffs]
    )


def _params(records: list[E.RunRecord], label: str) -> int:
    return next(r.params for r in records if r.label == label)


@dataclass(frozen=True)
class DepthRow:
    """Which shape wins at one budget, and by how much against each other shape."""

    tokens_per_param: float
    passes: float
    relative: dict[str, tuple[float, float, float]]  # shape: loss − the shapes' mean on the same seed (mean, low, high)
    winner: str
    against: dict[str, Paired]  # other shape: other − winner, paired by seed (positive: the winner is better)
    wins_on: int  # seeds on which the winner has the lowest loss of all shapes
    seeds: int


def best_depth(sweeps: list[Ablation], labels: tuple[str, ...], settings: Settings) -> list[DepthRow]:
    """The best of ``labels`` at each budget of ``sweeps``, paired by seed against the others."""
    rows = []
    for sweep in sweeps:
        found, _ = E.cached_runs(sweep, settings)
        loss = {lab: {r.seed: r.final_val_loss for r in found if r.label == lab} for lab in labels}
        seeds = sorted(set.intersection(*(set(v) for v in loss.values())))
        if not seeds:
            continue
        centre = {s: statistics.fmean(loss[lab][s] for lab in labels) for s in seeds}
        relative = {lab: t_interval([loss[lab][s] - centre[s] for s in seeds]) for lab in labels}
        winner = min(labels, key=lambda lab: relative[lab][0])
        against = {
            lab: paired(winner, lab, {s: loss[winner][s] for s in seeds}, {s: loss[lab][s] for s in seeds})
            for lab in labels
            if lab != winner
        }
        wins_on = sum(1 for s in seeds if min(labels, key=lambda lab: loss[lab][s]) == winner)
        rows.append(
            DepthRow(
                sweep.recipe.tokens / _params(found, labels[0]),
                E.passes(sweep.recipe),
                relative,
                winner,
                against,
                wins_on,
                len(seeds),
            )
        )
    return rows


@dataclass(frozen=True)
class RepetitionTest:
    """One pair of variants at one budget, on the whole corpus and on a fraction of it (more passes)."""

    full: BudgetPoint
    repeated: BudgetPoint
    shift: Paired  # the paired difference on the fraction minus on the whole corpus, seed by seed

    @property
    def factor(self) -> float:
        """How many times as often the fraction was read as the whole corpus."""
        return self.repeated.passes / self.full.passes

    def reading(self, slope: float) -> str:
        """What the test says about a budget trend of ``slope`` nats per 10× tokens: the trend predicts a
        shift of ``slope · log10(factor)`` if passes, not tokens, drove it."""
        s, predicted = self.shift, slope * math.log10(self.factor)
        said = (
            f"reading the data {self.factor:.1f}× as often moved the difference by {s.interval()} nats "
            f"(the budget trend predicts {predicted:+.3f} for {self.factor:.1f}× the tokens)"
        )
        if s.verdict in ("better", "worse"):
            return f"{said}: repetition itself moves the difference ({s.verdict} on {s.agree}/{s.n} seeds)"
        if s.low <= predicted <= s.high:
            return (
                f"{said}: the interval holds both zero and the trend's prediction, so {s.n} seeds cannot tell "
                "whether repetition explains the trend"
            )
        return f"{said}: the interval holds zero but not the prediction, so repetition does not explain the trend"


def repetition_test(full: Ablation, repeated: Ablation, a: str, b: str, settings: Settings) -> RepetitionTest:
    """``b`` against ``a`` trained on the same tokens from the whole corpus and from a fraction of it."""
    (whole,), _ = budget_points([full], a, b, settings)
    (part,), _ = budget_points([repeated], a, b, settings)
    diffs_whole = dict(zip(whole.paired.seeds, whole.paired.diffs, strict=True))
    diffs_part = dict(zip(part.paired.seeds, part.paired.diffs, strict=True))
    return RepetitionTest(whole, part, paired("whole corpus", "a fraction", diffs_whole, diffs_part))


def rederive_seconds(ab: Ablation, settings: Settings) -> float:
    """How long retraining every cached run of ``ab`` took when it was trained (the sum of wall times)."""
    found, _ = E.cached_runs(ab, settings)
    return sum(r.wall_time for r in found)


@dataclass(frozen=True)
class Check:
    """A cached run trained again from its stored recipe and seed."""

    label: str
    seed: int
    stored: float
    retrained: float
    seconds: float

    @property
    def agrees(self) -> bool:
        """Whether the two validation losses agree to ``VERIFY_TOLERANCE``."""
        return abs(self.retrained - self.stored) <= VERIFY_TOLERANCE


def verify(
    ab: Ablation, settings: Settings, labels: list[str] | None = None, seeds: list[int] | None = None
) -> Iterator[Check]:
    """Train the cached runs of ``ab`` again (only ``labels`` and ``seeds`` if given) into a temporary
    folder, and yield each beside its stored loss. The cache itself is never written."""
    found, _ = E.cached_runs(ab, settings.replace(quick=False))
    chosen = [r for r in found if (not labels or r.label in labels) and (seeds is None or r.seed in seeds)]
    if not chosen:
        have = sorted({(r.label, r.seed) for r in found})
        raise ValueError(f"no cached run of {ab.name} matches labels {labels} and seeds {seeds}; cached: {have}")
    configs = dict(ab.variants)
    with tempfile.TemporaryDirectory(prefix="mobilellm-verify-") as tmp:
        for rec in chosen:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the runner's own log lines: the caller reports
                again = E.run_one(rec.label, configs[rec.label], ab.recipe, rec.seed, settings, Path(tmp))
            yield Check(rec.label, rec.seed, rec.final_val_loss, again.final_val_loss, time.perf_counter() - start)
