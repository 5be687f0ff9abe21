"""Summary statistics of repeated runs (one value per seed): mean, sample standard deviation and a
two-sided 95% confidence interval of the mean from Student's t distribution.

With n values the interval is mean +- t(0.975, n - 1) * s / sqrt(n), s the sample standard
deviation (n - 1 in the denominator): the usual interval for a mean when the spread is estimated
from the same few runs. One value gives no spread and no interval: both are None, and ``note``
says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.95


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float | None:
    """Standard deviation with n - 1 in the denominator; None for fewer than two values."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def ci95(values: Sequence[float]) -> tuple[float, float] | None:
    """Two-sided 95% Student-t interval of the mean; None for fewer than two values."""
    s = sample_std(values)
    if s is None:
        return None
    from scipy.stats import t  # scipy is a dependency; imported here to keep `import fasthpt.stats` light

    n = len(values)
    half = float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * s / math.sqrt(n)
    m = mean(values)
    return m - half, m + half


def summarize(values: Sequence[float]) -> dict:
    """{"mean", "std", "n", "ci95": [lo, hi], "values"}; with one value std and ci95 are None and
    ``note`` says so."""
    values = [float(v) for v in values]
    interval = ci95(values)
    out = {"mean": mean(values), "std": sample_std(values), "n": len(values),
           "ci95": None if interval is None else [interval[0], interval[1]], "values": values}
    if interval is None:
        out["note"] = "one value: no standard deviation or confidence interval (use 2 or more seeds)"
    return out
