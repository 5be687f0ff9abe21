"""The convergence experiment's arithmetic, table, plot and report (pure functions of results).

A point is a dict: {"method", "iterations", "knn", "linear", "wall_clock_s", ...}. Methods:
"scratch" (MoCo from random init), "hpt", "hpt-bn", "direct" (the base itself, 0 iterations) and
"random" (the random-init backbone, 0 iterations, for reference).
"""

from __future__ import annotations

import math
from typing import Iterable

METHOD_LABELS = {
    "scratch": "MoCo from scratch",
    "hpt": "HPT (from base)",
    "hpt-bn": "HPT-BN (from base)",
    "direct": "direct transfer (base)",
    "random": "random init (no pretraining)",
}


METRIC_LABELS = {"knn": "kNN", "linear": "linear-probe"}


def _series(points: Iterable[dict], method: str, metric: str) -> list[dict]:
    pts = [p for p in points if p["method"] == method and p.get(metric) is not None]
    return sorted(pts, key=lambda p: p["iterations"])


def convergence_speedup(points: list[dict], method: str = "hpt", metric: str = "linear") -> dict:
    """HPT.md's definition: the iterations scratch needs to reach its best accuracy, divided by the
    iterations ``method`` needs to reach that same accuracy (and the same ratio in wall-clock).

    Returns {"metric", "scratch_best", "scratch_iterations", "method_iterations", "ratio",
    "wall_ratio", "reached", "at_first_point"}; ratio is None when ``method`` never reaches scratch's best.
    Only points with iterations > 0 count for ``method`` (0 iterations is direct transfer).
    """
    scratch = _series(points, "scratch", metric)
    other = [p for p in _series(points, method, metric) if p["iterations"] > 0]
    out = {"metric": metric, "method": method, "scratch_best": None, "scratch_iterations": None,
           "method_iterations": None, "ratio": None, "wall_ratio": None, "reached": False,
           "at_first_point": False}
    if not scratch or not other:
        return out
    best = max(p[metric] for p in scratch)
    first_best = next(p for p in scratch if p[metric] == best)  # fewest iterations reaching the max
    out.update(scratch_best=best, scratch_iterations=first_best["iterations"])
    reach = next((p for p in other if p[metric] >= best), None)
    if reach is None:
        return out
    out.update(method_iterations=reach["iterations"], reached=True, at_first_point=reach is other[0],
               ratio=first_best["iterations"] / reach["iterations"])
    if first_best.get("wall_clock_s") and reach.get("wall_clock_s"):
        out["wall_ratio"] = first_best["wall_clock_s"] / reach["wall_clock_s"]
    return out


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def results_table(points: list[dict]) -> str:
    """Markdown table: method x iterations -> kNN and linear accuracy, wall-clock, throughput."""
    rows = ["| method | iterations | kNN top-1 % | linear top-1 % | pretrain wall-clock s | samples/s | data stall % |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    for p in sorted(points, key=lambda p: (order.get(p["method"], 99), p["iterations"])):
        wall = p.get("wall_clock_s")
        sps = p.get("samples_per_s")
        stall = p.get("data_stall_frac")
        rows.append(
            f"| {p['method']} | {p['iterations']} | {_pct(p.get('knn'))} | {_pct(p.get('linear'))} | "
            f"{'-' if wall is None else f'{wall:.1f}'} | {'-' if sps is None else f'{sps:.0f}'} | "
            f"{'-' if stall is None else f'{100 * stall:.1f}'} |"
        )
    return "\n".join(rows)


def speedup_sentence(s: dict) -> str:
    label = METHOD_LABELS.get(s["method"], s["method"])
    if s["scratch_best"] is None:
        return f"{label}: not enough points to compute a speed-up."
    head = (f"From scratch, MoCo reaches its best {METRIC_LABELS.get(s['metric'], s['metric'])} accuracy, "
            f"{_pct(s['scratch_best'])}%, "
            f"at {s['scratch_iterations']} iterations")
    if not s["reached"]:
        return head + f"; {label} does not reach it within its grid."
    wall = "" if s["wall_ratio"] is None else f", {s['wall_ratio']:.1f}x in wall-clock"
    bound = " (its smallest budget, so the ratio is a lower bound)" if s.get("at_first_point") else ""
    return head + (f"; {label} reaches it at {s['method_iterations']} iterations{bound}: "
                   f"**{s['ratio']:.1f}x fewer iterations**{wall}.")


def plot_convergence(points: list[dict], path, metric: str = "linear", title: str = "") -> None:
    """Accuracy against pretraining iterations (log x), one line per method, dashed direct transfer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    styles = {"scratch": ("tab:gray", "o"), "hpt": ("tab:blue", "s"), "hpt-bn": ("tab:orange", "^")}
    for method, (color, marker) in styles.items():
        pts = [p for p in _series(points, method, metric) if p["iterations"] > 0]
        if pts:
            ax.plot([p["iterations"] for p in pts], [100 * p[metric] for p in pts], marker=marker,
                    color=color, label=METHOD_LABELS[method])
    direct = _series(points, "direct", metric)
    if direct:
        ax.axhline(100 * direct[0][metric], color="tab:green", linestyle="--", label=METHOD_LABELS["direct"])
    rand = _series(points, "random", metric)
    if rand:
        ax.axhline(100 * rand[0][metric], color="tab:red", linestyle=":", label=METHOD_LABELS["random"])
    ax.set_xscale("log")
    ax.set_xlabel("pretraining iterations on the target (log scale)")
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} top-1 accuracy (%)")
    ax.set_title(title or f"Convergence on the target domain ({METRIC_LABELS.get(metric, metric)} accuracy)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = str(path) + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    import os

    os.replace(tmp, path)
