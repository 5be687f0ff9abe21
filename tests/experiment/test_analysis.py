"""The experiment's statistics on hand-made points: convergence across budgets, the speed-up with
its seed and grid intervals, accuracy differences, and the Welch interval against scipy's."""

import math

import pytest
from scipy import stats

from fasthpt.experiment.analysis import accuracy_gain, convergence, extend_grid, speedup, welch


def _pts(method, table, metric="knn"):
    """table: {iterations: [(val, test), ...] one per seed}"""
    return [{"method": method, "iterations": it, "seed": s, "val": {metric: v}, "test": {metric: t},
             "wall_clock_s": it * 0.1} for it, rows in table.items() for s, (v, t) in enumerate(rows)]


SCRATCH = {100: [(.50, .49), (.52, .51), (.51, .50)], 300: [(.60, .60), (.61, .62), (.62, .61)],
           900: [(.61, .60), (.62, .61), (.60, .62)]}
HPT = {10: [(.55, .55), (.56, .56), (.54, .54)], 30: [(.62, .62), (.63, .63), (.61, .64)]}


def test_converged_at_the_first_step_without_a_significant_gain():
    conv = convergence(_pts("scratch", SCRATCH), "knn")
    assert conv["converged"] and conv["best_iterations"] == 300  # a tie on mean val: fewer iterations
    assert [s["to"] for s in conv["steps"]] == [300, 900]
    assert conv["steps"][0]["ci"][0] > 0 and conv["steps"][1]["ci"][0] <= 0


def test_still_rising_is_not_converged_and_the_grid_extends_up_to_the_cap():
    rising = {100: [(.4, .4), (.41, .41), (.42, .42)], 300: [(.5, .5), (.51, .51), (.52, .52)]}
    pts = _pts("scratch", rising)
    conv = convergence(pts, "knn")
    assert not conv["converged"] and conv["best_iterations"] == 300
    assert extend_grid(pts, "knn", [100, 300], factor=3, cap=1000) == 900
    assert extend_grid(pts, "knn", [100, 300], factor=3, cap=800) is None  # the cap: stop, not converged
    assert extend_grid(_pts("scratch", SCRATCH), "knn", [100, 300, 900], 3, 10**6) is None  # converged


def test_a_large_gain_that_is_not_significant_is_not_a_plateau():
    """Three noisy seeds: +5 points in the mean, an interval reaching below 0: still climbing."""
    noisy = {100: [(.30, .30), (.40, .40), (.35, .35)], 300: [(.32, .32), (.46, .46), (.42, .42)]}
    pts = _pts("scratch", noisy)
    conv = convergence(pts, "knn")
    assert conv["steps"][0]["ci"][0] < 0 < conv["steps"][0]["diff"] - 0.01
    assert not conv["converged"] and extend_grid(pts, "knn", [100, 300], 3, 1000) == 900
    assert convergence(pts, "knn", tol=0.06)["converged"]  # a looser tolerance calls it a plateau


def test_with_patience_a_stall_followed_by_a_climb_is_not_a_plateau():
    """100 -> 300 gains, 300 -> 900 stalls, 900 -> 2700 climbs again (MoCo on a small target)."""
    stall = {100: [(.33, .33), (.34, .34), (.29, .29)], 300: [(.36, .36), (.38, .38), (.39, .39)],
             900: [(.38, .38), (.36, .36), (.40, .40)], 2700: [(.44, .44), (.43, .43), (.45, .45)]}
    upto900 = [p for p in _pts("scratch", stall) if p["iterations"] <= 900]
    assert convergence(upto900, "knn")["converged"]  # one flat step: fooled by the stall
    assert not convergence(upto900, "knn", patience=2)["converged"]
    assert extend_grid(upto900, "knn", [100, 300, 900], 3, 10**4, patience=2) == 2700
    conv = convergence(_pts("scratch", stall), "knn", patience=2)
    assert not conv["converged"] and conv["best_iterations"] == 2700
    flat = {**stall, 2700: [(.39, .39), (.37, .37), (.38, .38)]}
    conv = convergence(_pts("scratch", flat), "knn", patience=2)
    assert conv["converged"] and conv["best_iterations"] == 900 and conv["patience"] == 2


def test_speedup_is_budget_ratio_with_seed_and_grid_intervals():
    pts = _pts("scratch", SCRATCH) + _pts("hpt", HPT)
    conv = convergence(pts, "knn")
    s = speedup(pts, "hpt", "knn", conv)
    # target: scratch's mean test at 300 = 0.61; HPT's mean test first >= 0.61 at 30 (0.63)
    assert s["target"] == pytest.approx(0.61) and s["method_iterations"] == 30 and s["ratio"] == 10
    assert s["grid"] == (10, 30)  # reached between 10 and 30 iterations
    assert s["ci"][0] <= 10 <= s["ci"][1] and s["supported"]
    assert s["wall_ratio"] == pytest.approx(30 / 3)
    assert s["wall_range"] == pytest.approx((10, 10))  # every seed's run took the same time here


def test_the_wall_clock_ratio_comes_with_the_seeds_extremes_in_the_report():
    from fasthpt.report import speedup_sentence

    pts = _pts("scratch", SCRATCH) + _pts("hpt", HPT)
    for p in pts:
        if p["method"] == "hpt" and p["iterations"] == 30:
            p["wall_clock_s"] = {0: 2.0, 1: 3.0, 2: 4.0}[p["seed"]]
    s = speedup(pts, "hpt", "knn", convergence(pts, "knn"))
    assert s["wall_ratio"] == pytest.approx(30 / 3) and s["wall_range"] == pytest.approx((7.5, 15))
    text = speedup_sentence(s, "HPT")
    assert "10.0x fewer iterations (95% seed interval" in text  # the interval belongs to the iterations
    assert "scratch's run / HPT's = 10.0x (seeds' extremes 7.5x to 15.0x)" in text


def test_speedup_at_the_first_budget_is_unbounded_above_and_not_reached_is_not_supported():
    early = {10: [(.63, .63), (.64, .64), (.62, .65)]}
    pts = _pts("scratch", SCRATCH) + _pts("hpt", early)
    s = speedup(pts, "hpt", "knn", convergence(pts, "knn"))
    assert s["grid"] == (30, math.inf)
    weak = {10: [(.40, .40)] * 3, 30: [(.45, .45)] * 3}
    pts = _pts("scratch", SCRATCH) + _pts("hpt", weak)
    s = speedup(pts, "hpt", "knn", convergence(pts, "knn"))
    assert not s["reached"] and s["ratio"] is None and not s["supported"]


def test_a_ratio_or_a_lead_over_an_unconverged_scratch_is_never_supported():
    rising = {100: [(.4, .4), (.41, .41), (.42, .42)], 300: [(.5, .5), (.51, .51), (.52, .52)]}
    pts = _pts("scratch", rising) + _pts("hpt", HPT)
    conv = convergence(pts, "knn")
    s = speedup(pts, "hpt", "knn", conv)
    assert s["reached"] and not s["scratch_converged"] and not s["supported"]
    lead = accuracy_gain(pts, "hpt", "knn", "scratch", conv)  # +0.12, an interval far above 0
    assert lead["ci"][0] > 0 and lead["direction"] == "higher" and not lead["supported"]
    behind = accuracy_gain(_pts("scratch", rising) + _pts("hpt", {10: [(.30, .30), (.31, .31), (.32, .32)]}),
                           "hpt", "knn", "scratch", conv)
    assert behind["supported"] and behind["direction"] == "lower"  # behind scratch so far: behind, full stop


def test_accuracy_gains_against_scratch_and_against_the_base():
    pts = _pts("scratch", SCRATCH) + _pts("hpt", HPT)
    pts.append({"method": "direct", "iterations": 0, "val": {"knn": .5}, "test": {"knn": .5}})
    conv = convergence(pts, "knn")
    vs_scratch = accuracy_gain(pts, "hpt", "knn", "scratch", conv)
    assert vs_scratch["iterations"] == 30 and vs_scratch["diff"] == pytest.approx(0.63 - 0.61)
    vs_base = accuracy_gain(pts, "hpt", "knn", "direct", conv)
    assert vs_base["supported"] and vs_base["direction"] == "higher"
    assert vs_base["diff"] == pytest.approx(0.13)
    lo, hi = stats.t.interval(0.95, 2, loc=0.63, scale=stats.sem([.62, .63, .64]))
    assert vs_base["ci"] == pytest.approx((lo - .5, hi - .5))  # the base is a fixed number


def test_welch_interval_matches_scipy():
    a, b = [0.61, 0.64, 0.60, 0.66], [0.55, 0.58, 0.52]
    got = welch(a, b)
    want = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert got["ci"] == pytest.approx((want.low, want.high)) and got["diff"] == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert welch([0.5], [0.4])["ci"] is None
