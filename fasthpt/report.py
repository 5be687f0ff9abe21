"""The convergence experiment's report: tables, claim sentences and plots, as pure functions of
``results`` (what fasthpt.experiment.run.Experiment.run returns and results.json holds).

Every sentence that states a claim is generated from the numbers and their 95% intervals: a claim
the intervals do not support is printed as not supported.
"""

from __future__ import annotations

import math

from fasthpt.experiment.analysis import cells
from fasthpt.stats import summarize

METHOD_LABELS = {
    "scratch": "MoCo from scratch",
    "hpt": "HPT (from base)",
    "hpt-bn": "HPT-BN (from base)",
    "direct": "direct transfer (base)",
    "random": "random init (no pretraining)",
}
METRIC_LABELS = {"knn": "kNN", "linear": "linear-probe"}


def pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def interval(ci, scale: float = 100, unit: str = "") -> str:
    return "no interval (one seed)" if ci is None else f"{scale * ci[0]:.1f} to {scale * ci[1]:.1f}{unit}"


def mean_ci(values: list[float]) -> str:
    """'62.3 ± 1.4' (95% half-width), or '62.3' for one value."""
    s = summarize(values)
    if s["ci95"] is None:
        return pct(s["mean"])
    return f"{pct(s['mean'])} ± {100 * (s['ci95'][1] - s['mean']):.1f}"


# ---------------------------------------------------------------- tables


def results_table(points: list[dict]) -> str:
    """Per method and budget: seeds, test accuracy (mean ± 95% half-width) for kNN and linear, val
    accuracy of the headline's kind, pretraining wall-clock and throughput (means over seeds)."""
    rows = ["| method | iterations | seeds | kNN test % | linear test % | kNN val % | linear val % | "
            "pretrain s | samples/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        if not p.get("study"):
            groups.setdefault((p["method"], p["iterations"]), []).append(p)
    for (method, iters), ps in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        walls = [p["wall_clock_s"] for p in ps if p.get("wall_clock_s")]
        sps = [p["samples_per_s"] for p in ps if p.get("samples_per_s")]
        cols = [mean_ci([p[s][m] for p in ps]) for s, m in (("test", "knn"), ("test", "linear"),
                                                            ("val", "knn"), ("val", "linear"))]
        rows.append(f"| {method} | {iters} | {len(ps)} | " + " | ".join(cols) + " | "
                    f"{f'{sum(walls) / len(walls):.1f}' if walls else '-'} | {f'{sum(sps) / len(sps):.0f}' if sps else '-'} |")
    return "\n".join(rows)


def study_table(rows: list[dict], kind: str) -> str:
    out = ["| condition | scratch test % | HPT test % | HPT - scratch (points, 95% interval) |", "|---|---:|---:|---:|"]
    for r in rows:
        if r["kind"] != kind:
            continue
        gain = r.get("gain")
        cell = "-" if gain is None else f"{100 * gain['diff']:+.1f} ({interval(gain['ci'])})"
        out.append(f"| {r['condition']} | {_summary_cell(r.get('scratch'))} | {_summary_cell(r.get('hpt'))} | {cell} |")
    return "\n".join(out)


def _summary_cell(s) -> str:
    if not s:
        return "-"
    return pct(s["mean"]) if s["ci95"] is None else f"{pct(s['mean'])} ± {100 * (s['ci95'][1] - s['mean']):.1f}"


# ---------------------------------------------------------------- claim sentences


def convergence_sentence(conv: dict) -> str:
    steps = "; ".join(f"{s['from']} -> {s['to']}: {100 * s['diff']:+.1f} points ({interval(s['ci'])})"
                      for s in conv["steps"]) or "one budget only"
    if conv["converged"]:
        tol = 100 * conv.get("tol", 0.01)
        n = conv.get("patience", 1)
        last = "its last step" if n == 1 else f"its last {n} steps each"
        return (f"MoCo from scratch converged: {last} gained at most {tol:.1f} points in mean val accuracy and "
                f"nothing significant ({steps}); its best budget is {conv['best_iterations']} iterations.")
    return (f"**MoCo from scratch did NOT converge** within the grid (it needs {conv.get('patience', 1)} step(s) in a row without a gain above {100 * conv.get('tol', 0.01):.1f} points in mean val accuracy or a significant one: {steps}): "
            f"its best so far ({conv['best_iterations']} iterations) understates it, so every ratio below is a "
            "bound, not a figure.")


def speedup_sentence(s: dict, label: str) -> str:
    metric = METRIC_LABELS.get(s["metric"], s["metric"])
    if s["target"] is None:
        return f"{label}: not enough points to compute a speed-up."
    head = (f"Scratch's best {metric} accuracy is {pct(s['target'])}% (test) at {s['scratch_iterations']} iterations")
    if not s["reached"]:
        return head + f"; **{label} does not reach it** within its grid: a speed-up is not supported."
    lo_grid, hi_grid = s["grid"]
    grid = (f"at least {lo_grid:.1f}x (reached at its first budget)" if math.isinf(hi_grid)
            else f"between {lo_grid:.1f}x and {hi_grid:.1f}x")
    fewer = f"{s['ratio']:.1f}x fewer iterations" if s["ratio"] > 1 else "no fewer iterations"
    text = (f"{head}; {label} reaches it at {s['method_iterations']}: {fewer} "
            f"(95% seed interval {s['ci'][0]:.1f}x to {s['ci'][1]:.1f}x; the grid places it {grid}).")
    if s["wall_ratio"] is not None:
        lo, hi = s.get("wall_range") or (s["wall_ratio"], s["wall_ratio"])
        text += (f" Pretraining wall-clock, set-up included: scratch's run / {label}'s = {s['wall_ratio']:.1f}x "
                 f"(seeds' extremes {lo:.1f}x to {hi:.1f}x).")
    if not s["scratch_converged"]:
        return text + " **Scratch has not converged, so this is a bound, not a speed-up.**"
    if s["supported"]:
        return text + " Supported: the interval lies above 1x."
    return text + " **Not supported: the interval includes 1x.**"


def gain_sentence(g: dict, label: str) -> str:
    metric = METRIC_LABELS.get(g["metric"], g["metric"])
    if g["against"] == "scratch":
        other = "scratch's converged best" if g.get("scratch_converged", True) else "scratch's best so far"
    else:
        other = "direct transfer (the base itself)"
    if g["diff"] is None:
        return f"{label} vs {other}: not enough points."
    text = (f"{label} at its best budget ({g['iterations']} it, {pct(g['mean'])}% {metric}, test) minus {other} "
            f"({pct(g['against_mean'])}%): {100 * g['diff']:+.1f} points (95% interval {interval(g['ci'])})")
    if g["supported"]:
        return text + f": {label} is {'better' if g['direction'] == 'higher' else 'worse'}, supported."
    if g["direction"] == "higher":  # ahead of a scratch run that is still gaining
        return (text + f": {label} is ahead within the grid, **but scratch has not converged: that it stays "
                "behind is not supported.**")
    return text + ": **no difference is supported (the interval includes 0).**"


def claims_lines(claims: dict) -> list[str]:
    lines = []
    for m in ("hpt", "hpt-bn"):
        label = METHOD_LABELS[m].split(" (")[0]
        lines += [f"- Convergence: {speedup_sentence(claims['speedup'][m], label)}",
                  f"- Accuracy: {gain_sentence(claims['vs_scratch'][m], label)}",
                  f"- Target pretraining vs its base: {gain_sentence(claims['vs_base'][m], label)}"]
    return lines


# ---------------------------------------------------------------- plots


def plot_convergence(points: list[dict], conv: dict, path, metric: str, title: str = "") -> None:
    """Mean test accuracy against pretraining iterations (log x) per method, with its 95% interval
    as a band; scratch's best budget marked (converged or not); direct transfer dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.4, 4.4), dpi=120)
    styles = {"scratch": ("tab:gray", "o"), "hpt": ("tab:blue", "s"), "hpt-bn": ("tab:orange", "^")}
    main = [p for p in points if not p.get("study")]
    for method, (color, marker) in styles.items():
        series = cells(main, method, metric, "test")
        if not series:
            continue
        xs = list(series)
        stats = [summarize(v) for v in series.values()]
        ax.plot(xs, [100 * s["mean"] for s in stats], marker=marker, color=color, label=METHOD_LABELS[method])
        if all(s["ci95"] for s in stats):
            ax.fill_between(xs, [100 * s["ci95"][0] for s in stats], [100 * s["ci95"][1] for s in stats],
                            color=color, alpha=0.15, linewidth=0)
    best = conv.get("best_iterations")
    if best:
        state = "converged" if conv["converged"] else "NOT converged"
        ax.axvline(best, color="tab:gray", linestyle=":", linewidth=1)
        ax.annotate(f"scratch best ({state})", (best, 0.02), xycoords=("data", "axes fraction"), fontsize=7,
                    rotation=90, ha="right", color="tab:gray")
    for method, style, color in (("direct", "--", "tab:green"), ("random", ":", "tab:red")):
        ref = [p["test"][metric] for p in main if p["method"] == method]
        if ref:
            ax.axhline(100 * ref[0], color=color, linestyle=style, label=METHOD_LABELS[method])
    ax.set_xscale("log")
    ax.set_xlabel("pretraining iterations on the target (log scale; each budget its own schedule)")
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} top-1, test (%)")
    ax.set_title(title or f"Convergence on the target ({METRIC_LABELS.get(metric, metric)}, mean and 95% interval)",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)  # outside: never over a curve
    _save(fig, path, plt)


def plot_robustness(rows: list[dict], path, metric: str) -> None:
    """One panel per study: HPT and scratch test accuracy per condition, 95% intervals as error bars."""
    plt = _pyplot()
    kinds = [k for k in ("augmentation", "data") if any(r["kind"] == k for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5.2 * max(1, len(kinds)), 3.8), dpi=120, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rs = [r for r in rows if r["kind"] == kind]
        xs = range(len(rs))
        for offset, method, color in ((-0.15, "scratch", "tab:gray"), (0.15, "hpt", "tab:blue")):
            ss = [r.get(method) for r in rs]
            means = [100 * s["mean"] if s else float("nan") for s in ss]
            errs = [100 * (s["ci95"][1] - s["mean"]) if s and s["ci95"] else 0 for s in ss]
            ax.errorbar([x + offset for x in xs], means, yerr=errs, fmt="o", color=color, capsize=3,
                        label=METHOD_LABELS[method])
        ax.set_xticks(list(xs), [r["condition"] for r in rs], rotation=20, fontsize=8)
        ax.set_title(f"{kind} study", fontsize=9)
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} top-1, test (%)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path, plt)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, plt) -> None:
    from fasthpt.fileio import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ---------------------------------------------------------------- the whole report


def render(results: dict) -> str:
    """report.md: what ran on what, the table, the claims, the studies, where the time went."""
    m, metric = results["machine"], results["metric"]
    ref = m.get("reference_step") or {}
    speed = (f" The reference MoCo step (resnet_tiny, 56 px, batch 64, channels_last) ran at "
             f"{ref['samples_per_s']:.0f} samples/s here (161 on the slow machine a 20-minute budget is stated for)."
             if ref.get("samples_per_s") else "")
    lines = [
        f"# HPT's convergence experiment (`{results['preset']}` preset)", "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, device {m['device']}, torch {m['torch']}.{speed} "
        f"Total wall-clock {results['wall_clock_s'] / 60:.1f} min.",
        f"Target: `{results['target']}`; base: `{results['base']}`. Every budget is its own run with its own "
        "cosine schedule (the paper's way); budgets and seeds are chosen on val, every accuracy below is test. "
        "Intervals are 95%: Student t over seeds (means), Welch (differences), a seed bootstrap (speed-ups).", "",
        "## Claims", "",
        convergence_sentence(results["convergence"]), "",
        f"Headline metric: {METRIC_LABELS[metric]}.", "",
        *claims_lines(results["claims"]), "",
        f"The same claims with the {METRIC_LABELS['linear' if metric == 'knn' else 'knn']} (decisions on its own val):", "",
        convergence_sentence(results["other_metric"]["convergence"]) if "convergence" in results["other_metric"] else "",
        *claims_lines(results["other_metric"]), "",
        "## Accuracy per method and budget (mean ± 95% half-width over seeds)", "",
        results_table(results["points"]), "",
        f"![convergence, {metric}](convergence.png)", "",
    ]
    if results.get("studies"):
        rows = results["studies"][metric]
        lines += ["## Robustness studies (HPT vs scratch, test accuracy)", ""]
        for kind in ("augmentation", "data"):
            if any(r["kind"] == kind for r in rows):
                lines += [f"### {kind}", "", study_table(rows, kind), ""]
        lines += ["![robustness](robustness.png)", ""]
    lines += ["## Where the time went", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in results["phases_s"].items()]
    return "\n".join(lines) + "\n"
