"""A miniature `fasthpt demo` end to end: report, plot and results.json consistent with each other."""

import json
import re

import pytest

from fasthpt.cli import main
from fasthpt.report import convergence_speedup


@pytest.mark.slow
def test_miniature_demo_end_to_end(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "data"
    argv = ["demo", "--scale", "tiny", "--out", str(out), "--data", str(data), "--backend", "torch"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    assert (out / "convergence.png").stat().st_size > 5000

    points = results["points"]
    grid = {(p["method"], p["iterations"]) for p in points}
    assert ("direct", 0) in grid and ("random", 0) in grid
    for method in ("scratch", "hpt", "hpt-bn"):
        assert {i for m, i in grid if m == method} == set(results["settings"][
            "scratch_grid" if method == "scratch" else "hpt_grid"])
    for p in points:
        assert 0.0 <= p["knn"] <= 1.0 and 0.0 <= p["linear"] <= 1.0
        # each table row in the report shows the same accuracies as results.json
        row = f"| {p['method']} | {p['iterations']} | {100 * p['knn']:.1f} | {100 * p['linear']:.1f} |"
        assert row in report, row
    # the stored speed-up is the one recomputed from the stored points
    assert results["speedup"]["hpt"] == convergence_speedup(points, "hpt", results["metric"])
    trained = [p for p in points if p["method"] not in ("direct", "random")]
    assert all(p["wall_clock_s"] > 0 and p["samples_per_s"] > 0 for p in trained)
    assert re.search(r"Total wall-clock \d+\.\d min", report)

    # a second run reuses every finished pretraining run
    before = {p.stat().st_mtime for p in out.glob("*/backbone.pt")}
    assert main(argv) == 0
    assert {p.stat().st_mtime for p in out.glob("*/backbone.pt")} == before
