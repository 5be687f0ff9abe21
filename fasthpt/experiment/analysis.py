"""The convergence experiment's statistics, as pure functions of its points.

A point is one evaluated backbone: {"method", "iterations", "seed", "val": {metric: acc},
"test": {metric: acc}, "wall_clock_s", ...}. Methods: "scratch" (MoCo from random init), "hpt",
"hpt-bn", "direct" (the base itself, 0 iterations) and "random" (random init, 0 iterations).

Decisions (when scratch has converged, which budget is a method's best) are taken on val; every
figure a claim states is measured on test. Intervals are 95%: Student t over seeds for a mean,
Welch for a difference of means, a seed bootstrap for a ratio of budgets.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

from fasthpt.stats import CONFIDENCE as LEVEL
from fasthpt.stats import summarize


def welch(a: list[float], b: list[float], level: float = LEVEL) -> dict:
    """mean(a) - mean(b) with its two-sided Welch interval (unequal variances, Welch-Satterthwaite
    degrees of freedom). One side with a single value is taken as exact (a fixed reference such as
    the base's deterministic kNN accuracy); both single: no interval."""
    from scipy.stats import t

    diff = _mean(a) - _mean(b)
    va = _var(a) / len(a) if len(a) > 1 else 0.0
    vb = _var(b) / len(b) if len(b) > 1 else 0.0
    if len(a) < 2 and len(b) < 2:
        return {"diff": diff, "ci": None}
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "ci": (diff, diff)}
    df = (va + vb) ** 2 / sum(v * v / (len(x) - 1) for v, x in ((va, a), (vb, b)) if len(x) > 1)
    half = float(t.ppf(0.5 + level / 2, df)) * se
    return {"diff": diff, "ci": (diff - half, diff + half)}


def cells(points: list[dict], method: str, metric: str, split: str) -> dict[int, list[float]]:
    """{iterations: [value per seed, in seed order]} of ``method`` (iterations > 0)."""
    out: dict[int, list[tuple]] = defaultdict(list)
    for p in points:
        value = p.get(split, {}).get(metric)
        if p["method"] == method and p["iterations"] > 0 and value is not None:
            out[p["iterations"]].append((p.get("seed", 0), value))
    return {b: [v for _, v in sorted(vs)] for b, vs in sorted(out.items())}


def walls(points: list[dict], method: str) -> dict[int, list[float]]:
    out: dict[int, list[tuple]] = defaultdict(list)
    for p in points:
        if p["method"] == method and p["iterations"] > 0 and p.get("wall_clock_s"):
            out[p["iterations"]].append((p.get("seed", 0), p["wall_clock_s"]))
    return {b: [v for _, v in sorted(vs)] for b, vs in sorted(out.items())}


PLATEAU_TOL = 0.01  # a step whose mean val gain is above this is still climbing, significant or not


def convergence(points: list[dict], metric: str, method: str = "scratch", tol: float = PLATEAU_TOL,
                patience: int = 1) -> dict:
    """Has ``method`` converged across its budgets (each its own schedule)? Walking the budgets up,
    it has at the first step whose gain in mean val accuracy over the previous budget is neither
    significant (its Welch 95% interval reaches 0 or below) nor above ``tol`` in its mean: with a few
    seeds a real gain of several points is often not significant, and is not a plateau. With
    ``patience`` N it takes N such steps in a row (SSL curves can stall and climb again). Its best
    budget is the one with the highest mean val accuracy among those walked. Not converged: no such
    run of steps so far."""
    val = cells(points, method, metric, "val")
    budgets = list(val)
    steps, converged, walked, flat = [], False, budgets[:1], 0
    for prev, cur in zip(budgets, budgets[1:]):
        gain = welch(val[cur], val[prev], LEVEL)
        steps.append({"from": prev, "to": cur, **gain})
        walked.append(cur)
        flat = flat + 1 if gain["diff"] <= tol and (gain["ci"] is None or gain["ci"][0] <= 0) else 0
        if flat >= patience:
            converged = True
            break
    best = max(walked, key=lambda b: (sum(val[b]) / len(val[b]), -b)) if walked else None
    return {"method": method, "metric": metric, "converged": converged, "best_iterations": best,
            "budgets": budgets, "steps": steps, "tol": tol, "patience": patience}


def extend_grid(points: list[dict], metric: str, budgets: list[int], factor: int, cap: int,
                tol: float = PLATEAU_TOL, patience: int = 1) -> int | None:
    """The next scratch budget to run, or None: converged, or the next step would pass ``cap``."""
    if not budgets:
        return None
    if convergence(points, metric, tol=tol, patience=patience)["converged"]:
        return None
    nxt = budgets[-1] * factor
    return nxt if nxt <= cap else None


def first_reaching(means: dict[int, float], target: float) -> tuple[int | None, int]:
    """(the smallest budget whose mean reaches ``target``, the budget before it: 0 if none)."""
    prev = 0
    for b, m in sorted(means.items()):
        if m >= target:
            return b, prev
        prev = b
    return None, prev


def speedup(points: list[dict], method: str, metric: str, conv: dict, boot: int = 2000, seed: int = 0) -> dict:
    """The paper's convergence speed-up (Reed et al. 2022): the iterations scratch needs to reach its converged best
    (its best budget on val; its mean test accuracy there is the target), divided by the iterations
    ``method`` needs to reach that mean test accuracy. Uncertainty:
    - seeds: a bootstrap over seeds within each budget (scratch's best budget held fixed), 95%
      percentile interval; a resample where the method never reaches the target counts as 0x;
    - grid: the method reached the target somewhere in (previous budget, budget], so the ratio on a
      finer grid would lie in [B / budget, B / previous budget) (unbounded above at the first budget).
    The wall-clock ratio compares mean pretraining seconds at the two budgets (set-up included);
    ``wall_range`` bounds it by the seeds' slowest and fastest runs."""
    test_s, test_m = cells(points, "scratch", metric, "test"), cells(points, method, metric, "test")
    out = {"method": method, "metric": metric, "scratch_converged": conv["converged"],
           "scratch_iterations": conv["best_iterations"], "target": None, "method_iterations": None,
           "ratio": None, "ci": None, "grid": None, "wall_ratio": None, "wall_range": None,
           "reached": False, "supported": False}
    best = conv["best_iterations"]
    if best is None or best not in test_s or not test_m:
        return out
    target = _mean(test_s[best])
    reach, prev = first_reaching({b: _mean(v) for b, v in test_m.items()}, target)
    out.update(target=target, method_iterations=reach)
    if reach is None:
        return out
    ws, wm = walls(points, "scratch"), walls(points, method)
    rng, ratios = random.Random(seed), []
    for _ in range(boot):
        t = _mean(_resample(test_s[best], rng))
        r, _ = first_reaching({b: _mean(_resample(v, rng)) for b, v in test_m.items()}, t)
        ratios.append(best / r if r else 0.0)
    ratios.sort()
    ci = (ratios[int((1 - LEVEL) / 2 * boot)], ratios[min(boot - 1, int((1 + LEVEL) / 2 * boot))])
    out.update(reached=True, ratio=best / reach, ci=ci, grid=(best / reach, best / prev if prev else math.inf))
    if best in ws and reach in wm:
        out.update(wall_ratio=_mean(ws[best]) / _mean(wm[reach]),
                   wall_range=(min(ws[best]) / max(wm[reach]), max(ws[best]) / min(wm[reach])))
    out["supported"] = bool(conv["converged"] and ci[0] > 1)
    return out


def best_budget(points: list[dict], method: str, metric: str) -> int | None:
    """The budget of ``method`` with the highest mean val accuracy (fewest iterations on a tie)."""
    val = cells(points, method, metric, "val")
    return max(val, key=lambda b: (_mean(val[b]), -b)) if val else None


def accuracy_gain(points: list[dict], method: str, metric: str, against: str, conv: dict) -> dict:
    """Mean test accuracy of ``method`` at its best budget (chosen on val) minus that of ``against``:
    "scratch" at its converged best budget, or "direct" (the base, a fixed number when it has one
    evaluation: then the interval is the method's own t interval shifted). Welch 95% interval;
    supported when it excludes 0, except a lead over a scratch that has not converged."""
    b = best_budget(points, method, metric)
    mine = cells(points, method, metric, "test").get(b, [])
    if against == "scratch":
        other_b = conv["best_iterations"]
        other = cells(points, "scratch", metric, "test").get(other_b, [])
    else:
        other_b = 0
        other = [p["test"][metric] for p in points if p["method"] == against and metric in p.get("test", {})]
    unconverged = against == "scratch" and not conv["converged"]
    out = {"method": method, "against": against, "metric": metric, "iterations": b, "against_iterations": other_b,
           "diff": None, "ci": None, "supported": False, "direction": None,
           "scratch_converged": None if against != "scratch" else conv["converged"]}
    if not mine or not other:
        return out
    gain = welch(mine, other, LEVEL)
    out.update(diff=gain["diff"], ci=gain["ci"], mean=_mean(mine), against_mean=_mean(other))
    if gain["ci"] is not None and (gain["ci"][0] > 0 or gain["ci"][1] < 0):
        higher = gain["ci"][0] > 0
        # ahead of a scratch run that is still gaining is not the paper's claim: it may catch up
        out.update(supported=not (higher and unconverged), direction="higher" if higher else "lower")
    return out


def condition_table(points: list[dict], metric: str) -> list[dict]:
    """Robustness studies: per condition (a policy or a data fraction), HPT and scratch test
    accuracy (mean and interval over seeds) and their difference with its Welch interval."""
    by: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        study = p.get("study")
        if study and metric in p.get("test", {}):
            by[(study["kind"], study["condition"])][p["method"]].append(p["test"][metric])
    rows = []
    for (kind, condition), methods in by.items():
        row = {"kind": kind, "condition": condition, **{m: summarize(v) for m, v in methods.items()}}
        if methods.get("hpt") and methods.get("scratch"):
            row["gain"] = welch(methods["hpt"], methods["scratch"], LEVEL)
        rows.append(row)
    return rows


def _mean(values) -> float:
    return sum(values) / len(values)


def _var(values) -> float:
    m = _mean(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def _resample(values: list[float], rng: random.Random) -> list[float]:
    return [values[rng.randrange(len(values))] for _ in values]
