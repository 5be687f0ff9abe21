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


def test_the_demo_says_its_cost_before_it_starts(tmp_path, monkeypatch):
    """The planned pretraining (tiny preset: 14 runs, 1,344 images of batches of 16) priced at an
    injected 10 s per synthetic step: 840 s, said before the experiment runs; finished runs are not
    counted."""
    from fasthpt import forecast
    from fasthpt.experiment import cost
    from fasthpt.experiment.run import Experiment

    events = []
    monkeypatch.setattr(cost, "step_seconds", lambda cfg: 10.0)
    monkeypatch.setattr(forecast, "say_note", events.append)

    def run(self, studies, reference=None):
        events.append("experiment")
        raise RuntimeError("stopped here")

    monkeypatch.setattr(Experiment, "run", run)
    out = tmp_path / "out"
    argv = ["demo", "--scale", "tiny", "--out", str(out), "--data", str(tmp_path / "data"), "--no-reference"]
    with pytest.raises(RuntimeError, match="stopped here"):
        main(argv)
    assert len(events) == 2 and events[1] == "experiment"
    assert events[0].startswith("this demo's 14 pretraining runs will take about 14 min on this CPU: 1,344 "
                                "pretraining images at 625.0 ms each")
    assert events[0].endswith("faster: --scale tiny, grid.seeds=1, fewer --study, or a GPU")
    done = out / "runs" / "scratch-18-s1"
    done.mkdir(parents=True)
    (done / "demo_result.json").write_text("{}")
    cfg = load_preset(preset_path("tiny"))
    said = cost.forecast_demo(cfg, [], out)  # 13 runs left, 1,056 images: 660 s
    assert said.startswith("this demo's 13 pretraining runs will take about 11 min on this CPU: 1,056")
    # the studies add crop-only and 50% of the data (100% is the main experiment's own runs)
    studies = cost.planned_jobs(cfg, ["augmentation", "data"])[14:]
    assert sorted({j.name.rsplit("-s", 1)[0] for j in studies}) == [
        "study-augmentation-crop-only-hpt-6", "study-augmentation-crop-only-scratch-18",
        "study-data-0.5-hpt-6", "study-data-0.5-scratch-18"] and len(studies) == 8
