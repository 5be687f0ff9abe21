"""fasthpt.stats on values whose summary is known by hand (t quantiles from a printed t table)."""

import math

import pytest

from fasthpt import stats


def test_mean_std_and_interval_of_five_values():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    out = stats.summarize(values)
    assert out["mean"] == 3.0 and out["n"] == 5 and out["values"] == values
    assert out["std"] == pytest.approx(math.sqrt(2.5))  # sum of squares 10 over n - 1 = 4
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) = 2.776
    assert out["ci95"] == pytest.approx([3.0 - half, 3.0 + half], abs=1e-3)
    assert "note" not in out


def test_two_values_use_the_wide_t_quantile():
    lo, hi = stats.ci95([0.70, 0.80])
    half = 12.706 * math.sqrt(0.005) / math.sqrt(2)  # t(0.975, 1) = 12.706; s = 0.0707
    assert (lo, hi) == pytest.approx((0.75 - half, 0.75 + half), abs=1e-3)


def test_interval_narrows_towards_the_normal_one_with_many_values():
    values = [float(i % 2) for i in range(2000)]  # mean 0.5, s ~ 0.5
    lo, hi = stats.ci95(values)
    assert (hi - lo) / 2 == pytest.approx(1.96 * stats.sample_std(values) / math.sqrt(2000), rel=2e-3)


def test_one_value_has_no_spread_and_says_so():
    out = stats.summarize([0.9])
    assert out["mean"] == 0.9 and out["std"] is None and out["ci95"] is None and out["n"] == 1
    assert "one value" in out["note"]
    with pytest.raises(ValueError):
        stats.mean([])
