"""The gate's one statistical test, stated: a one-sided paired t-test against a margin.

For each conversation (or instruction prompt) d_i = new_i - live_i. H0: mean(d) >= -delta (the new
model is at most `delta` worse); refused when H0 is rejected at one-sided level alpha, i.e. when the
upper (1 - alpha) confidence bound of mean(d), mean + t(1 - alpha, n - 1) * sd / sqrt(n), lies below
-delta. A t-interval is right at the sizes used (N about 200, see the simulation tests in
tests/deployment/test_gate_statistics.py); a percentile bootstrap is not (it under-covers at small N).

Pure Python (math only), no SciPy: the Student-t distribution comes from the regularized incomplete
beta function. `refuses` and `detectable_drop` also take NumPy arrays, so the simulation tests run
the very rule the gate runs, vectorised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Sequence

POWER = 0.80
"""The power `detectable_drop` is quoted at."""


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on t_cdf, to 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    low, high = -1e4, 1e4
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-10:
            break
    return (low + high) / 2.0


def _critical(n: int, alpha: float) -> float:
    """t(1 - alpha, n - 1); the normal quantile for n < 2 (no spread to estimate)."""
    return t_quantile(1.0 - alpha, n - 1) if n >= 2 else NormalDist().inv_cdf(1.0 - alpha)


def refuses(mean: Any, sd: Any, n: int, delta: float, alpha: float) -> Any:
    """True where H0: mean(d) >= -delta is rejected at one-sided `alpha` (scalars or NumPy arrays alike)."""
    return mean + _critical(n, alpha) * sd / math.sqrt(n) < -delta


def detectable_drop(sd: Any, n: int, delta: float, alpha: float, power: float = POWER) -> Any:
    """The smallest true drop in mean(d) that this test refuses with probability `power`.

    delta + (t(1 - alpha) + t(power)) * sd / sqrt(n): the usual normal-theory power formula with
    t quantiles, checked against simulation in the statistics tests.
    """
    df = max(n - 1, 1)
    return delta + (_critical(n, alpha) + t_quantile(power, df)) * sd / math.sqrt(n)


def needed_n(sd: float, drop: float, delta: float, alpha: float, power: float = POWER) -> int:
    """The smallest N at which a true drop of `drop` is refused with probability `power` (spread `sd`)."""
    if drop <= delta:
        raise ValueError(f"a drop of {drop} is within the margin {delta}: no N refuses it")
    n = 2
    while detectable_drop(sd, n, delta, alpha, power) > drop:
        n += 1
    return n


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided t confidence interval over N values."""

    mean: float
    low: float
    high: float
    n: int
    level: float

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n, "level": self.level}


def interval(values: Sequence[float], level: float = 0.95, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """The two-sided t-interval of the mean, clipped to the values' possible range `bounds`."""
    mean, sd = mean_sd(values)
    n = len(values)
    if n < 2:
        return Interval(mean, mean, mean, n, level)
    half = _critical(n, (1.0 - level) / 2.0) * sd / math.sqrt(n)
    return Interval(mean, max(bounds[0], mean - half), min(bounds[1], mean + half), n, level)


@dataclass(frozen=True)
class PairedTest:
    """The test of one signal: d_i = new_i - live_i, H0 mean(d) >= -delta at one-sided alpha."""

    n: int
    mean: float
    sd: float
    delta: float
    alpha: float
    upper: float
    """The one-sided upper (1 - alpha) confidence bound of mean(d)."""
    worse: bool
    detectable: float
    """The smallest drop this N and spread refuses with 80% power."""
    planning_sd: bool
    """True when d had no spread (identical replies) and `detectable` uses the planning spread instead."""

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "delta": self.delta, "alpha": self.alpha,
                "upper_bound": self.upper, "worse": self.worse, "detectable_drop_80": self.detectable,
                "detectable_at_planning_sd": self.planning_sd}


def paired_test(new: Sequence[float], live: Sequence[float], *, delta: float, alpha: float,
                planning_sd: float) -> PairedTest:
    """Test new against live on the same items, in the same order."""
    if len(new) != len(live):
        raise ValueError(f"paired scores need the same items: {len(new)} new vs {len(live)} live")
    if not new:
        raise ValueError("no items to compare")
    d = [a - b for a, b in zip(new, live)]
    n = len(d)
    mean, sd = mean_sd(d)
    upper = mean + _critical(n, alpha) * sd / math.sqrt(n)
    spread = sd if sd > 0 else planning_sd
    return PairedTest(n, mean, sd, delta, alpha, upper, bool(upper < -delta),
                      float(detectable_drop(spread, n, delta, alpha)), sd <= 0)
