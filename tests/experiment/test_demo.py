"""A miniature `fasthpt demo` through every path: a base stopped at its plateau, a scratch grid
extended until it converges or hits its cap, seeds, the HPT grids and both robustness studies; its
report, plots and results.json must agree with each other, and a second call trains nothing."""

import json
import math

import pytest

from fasthpt.cli import main
from fasthpt.experiment import analysis
from fasthpt.experiment.preset import load_preset, preset_path
from fasthpt.report import render


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out, data = root / "out", root / "data"
    argv = ["demo", "--scale", "tiny", "--study", "all", "--out", str(out), "--data", str(data), "--no-reference"]
    assert main(argv) == 0
    return out, argv


@pytest.mark.slow
def test_every_path_ran_and_the_json_is_complete(tiny_demo):
    out, _ = tiny_demo
    r = json.loads((out / "results.json").read_text())
    cfg = load_preset(preset_path("tiny"))
    g = cfg.grid
    # the base's first stage stopped at its plateau (delta 1.0: at the 2nd kNN evaluation, iteration
    # 4 of 8); the second went on from it for its 4 iterations
    first, second = r["base_training"]["stages"]
    assert first["plateau_stopped"] and first["iterations"] == 4
    assert second["iterations"] == 4 and not second["plateau_stopped"]
    main_points = [p for p in r["points"] if not p.get("study")]
    budgets = sorted({p["iterations"] for p in main_points if p["method"] == "scratch"})
    # a x3 grid from its start, extended only while scratch still gained, never past the cap
    assert budgets == [g.scratch_start * g.scratch_factor ** i for i in range(len(budgets))]
    assert budgets[-1] <= g.scratch_cap
    conv = analysis.convergence(main_points, r["metric"], tol=g.plateau_tol, patience=g.plateau_steps)
    assert json.loads(json.dumps(conv)) == r["convergence"]
    if not conv["converged"]:
        assert budgets[-1] * g.scratch_factor > g.scratch_cap  # stopped by the cap, and flagged
    for method, grid in (("hpt", g.hpt), ("hpt-bn", g.hpt_bn), ("scratch", budgets)):
        for it in grid:
            seeds = sorted(p["seed"] for p in main_points if p["method"] == method and p["iterations"] == it)
            assert seeds == list(range(g.seeds)), (method, it)
    for p in r["points"]:
        for split in ("val", "test"):
            assert all(0 <= p[split][m] <= 1 for m in ("knn", "linear"))
    kinds = {(p["study"]["kind"], p["study"]["condition"]) for p in r["points"] if p.get("study")}
    assert kinds == {("augmentation", "mocov2"), ("augmentation", "crop-only"), ("data", "1"), ("data", "0.5")}


@pytest.mark.slow
def test_report_claims_and_plots_follow_from_the_json(tiny_demo):
    out, _ = tiny_demo
    r = json.loads((out / "results.json").read_text())
    # the report is a pure function of results.json: rendering the stored results gives it back
    assert (out / "report.md").read_text() == render(r)
    main_points = [p for p in r["points"] if not p.get("study")]
    from fasthpt.experiment.run import claims_of

    recomputed = json.loads(json.dumps(claims_of(main_points, r["convergence"], r["metric"])))
    assert recomputed == r["claims"]
    for m in ("hpt", "hpt-bn"):
        s = r["claims"]["speedup"][m]
        if s["supported"]:
            assert s["scratch_converged"] and s["ci"][0] > 1
        if s["ratio"] is not None:
            assert math.isclose(s["ratio"], s["scratch_iterations"] / s["method_iterations"])
    for name in ("convergence.png", "robustness.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000


@pytest.mark.slow
def test_a_second_call_trains_nothing(tiny_demo):
    out, argv = tiny_demo
    before = {p: p.stat().st_mtime for p in (out / "runs").glob("*/backbone.pt")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime for p in (out / "runs").glob("*/backbone.pt")} == before
