"""The course's one verdict rule: compare two variants seed by seed.

A seed fixes both a model's initialisation and the order of its training batches, so the runs of
two variants with the same seed are a *pair*: whatever luck the seed brought, both met it. The
per-seed differences ``b − a`` therefore say more than either variant's spread does. The rule:

- the difference on every seed both variants have;
- their mean with a 95% t-interval (Student's t, because three or five seeds are few);
- how many seeds agree with the sign of the mean;
- a verdict: **better** / **worse** when the interval excludes zero; **leaning better/worse** when
  every seed agrees in sign but the interval still reaches zero (too few seeds to be sure, not
  "noise"); **mixed** when the seeds disagree in sign; **one seed** when there is nothing to pair.

Lower validation loss is better, so a negative ``b − a`` means ``b`` is better.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def _t_quantile(q: float, df: int) -> float:
    from scipy import stats  # imported when first needed: the command line's parsers import this module

    return float(stats.t.ppf(q, df=df))


@dataclass(frozen=True)
class Paired:
    """The paired comparison of variant ``b`` against variant ``a``."""

    a: str
    b: str
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]  # b − a on each seed, lower is better for b
    mean: float
    low: float  # 95% t-interval of the mean (equal to ``mean`` with one seed)
    high: float
    agree: int  # seeds whose difference has the sign of the mean
    verdict: str  # better | worse | leaning better | leaning worse | mixed | one seed | equal

    @property
    def n(self) -> int:
        """The number of paired seeds."""
        return len(self.diffs)

    def interval(self) -> str:
        """The mean and its interval, e.g. ``+0.020 [+0.004, +0.036]``."""
        if self.n < 2:
            return f"{self.mean:+.3f}"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    def text(self) -> str:
        """One line for a reader, e.g. ``worse on 3/3 seeds, mean +0.020 [+0.004, +0.036]``."""
        if self.verdict == "one seed":
            return f"one seed only: {self.mean:+.3f} (no interval)"
        if self.verdict == "equal":
            return f"equal on all {self.n} seeds"
        if self.verdict == "mixed":
            side = "worse" if self.mean > 0 else "better"
            return f"mixed ({side} on {self.agree}/{self.n} seeds), mean {self.interval()}"
        return f"{self.verdict} on {self.agree}/{self.n} seeds, mean {self.interval()}"


def t_interval(values: list[float] | tuple[float, ...], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its Student-t confidence interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = _t_quantile(0.5 + level / 2, df=len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired(a: str, b: str, losses_a: dict[int, float], losses_b: dict[int, float]) -> Paired:
    """Compare ``b`` with ``a`` on the seeds both have (``{seed: validation loss}`` each)."""
    seeds = tuple(sorted(set(losses_a) & set(losses_b)))
    if not seeds:
        raise ValueError(
            f"{a!r} and {b!r} share no seed (seeds {sorted(losses_a)} vs {sorted(losses_b)}): "
            "train both with the same seeds to compare them"
        )
    diffs = tuple(losses_b[s] - losses_a[s] for s in seeds)
    mean, low, high = t_interval(diffs)
    agree = sum(1 for d in diffs if (d > 0) == (mean > 0) and d != 0)
    if len(diffs) < 2:
        verdict = "one seed"
    elif all(d == 0 for d in diffs):
        verdict = "equal"
    elif low > 0 or high < 0:
        verdict = "worse" if mean > 0 else "better"
    elif agree == len(diffs):
        verdict = "leaning worse" if mean > 0 else "leaning better"
    else:
        verdict = "mixed"
    return Paired(a=a, b=b, seeds=seeds, diffs=diffs, mean=mean, low=low, high=high, agree=agree, verdict=verdict)


@dataclass(frozen=True)
class Trend:
    """A straight line through paired differences against log10(tokens per parameter)."""

    slope: float  # change of the difference per 10x more tokens per parameter
    intercept: float
    n: int
    x_mean: float
    sxx: float
    resid_sd: float

    def at(self, budget: float) -> float:
        """The fitted difference at ``budget`` tokens per parameter."""
        return self.intercept + self.slope * math.log10(budget)

    def slope_interval(self, level: float = 0.95) -> tuple[float, float]:
        """The confidence interval of the slope (per 10x budget)."""
        half = _t_quantile(0.5 + level / 2, df=self.n - 2) * self.resid_sd / math.sqrt(self.sxx)
        return self.slope - half, self.slope + half

    def band(self, budget: float, level: float = 0.95) -> tuple[float, float]:
        """The confidence interval of the fitted mean at ``budget`` (wide far from the data)."""
        x = math.log10(budget)
        half = (
            _t_quantile(0.5 + level / 2, df=self.n - 2)
            * self.resid_sd
            * math.sqrt(1 / self.n + (x - self.x_mean) ** 2 / self.sxx)
        )
        return self.at(budget) - half, self.at(budget) + half


def log_trend(budgets: list[float], diffs: list[float]) -> Trend:
    """Least-squares line of ``diffs`` (one per seed and budget) against log10(``budgets``)."""
    if len(budgets) != len(diffs):
        raise ValueError(f"{len(budgets)} budgets but {len(diffs)} differences: give one budget per difference")
    xs = [math.log10(b) for b in budgets]
    if len(xs) < 3 or len(set(xs)) < 2:
        raise ValueError(
            f"a trend needs at least 3 differences at 2 or more budgets, got {len(xs)} at "
            f"{len(set(xs))}: train more budgets or seeds"
        )
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(diffs)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, diffs, strict=True)) / sxx
    intercept = y_mean - slope * x_mean
    resid = [y - (intercept + slope * x) for x, y in zip(xs, diffs, strict=True)]
    resid_sd = math.sqrt(sum(r * r for r in resid) / (len(xs) - 2))
    return Trend(slope=slope, intercept=intercept, n=len(xs), x_mean=x_mean, sxx=sxx, resid_sd=resid_sd)
