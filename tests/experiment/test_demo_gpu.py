"""The GPU preset's CPU miniature: configs/demo-gpu.yaml itself, shrunk by overrides to seconds (its
numbers meaningless), through every path of the claim run: prep of its target, the shipped base,
scratch's grid extended x3, seeds, the HPT and HPT-BN grids, evaluations (stored), the report; and
the claim's two calls: a first one fitted to a small --budget-s stops scratch's grid early, a second
on the same folder (its two new runs trained by two worker processes, `--parallel 2`) trains and
evaluates only what the first left.

The one path that differs from the GPU run: the torch loader trains (the preset's is FFCV -> CUDA):
FFCV compiles each loader's pipeline (7.5 s on the 2-core VM), a minute for these 12 runs; FFCV's
CPU path has its own tests (tests/data)."""

import json

import pytest
import yaml

from fasthpt.cli import main
from fasthpt.experiment import gpu_cost
from fasthpt.experiment.preset import load_preset, preset_path
from fasthpt.experiment.run import EVALUATIONS
from fasthpt.report import render

MINI = ["target.num_images=150", "pretrain.batch_size=16", "pretrain.queue_size=32", "pretrain.workers=0",
        "pretrain.backend=torch", "grid.seeds=2", "grid.scratch_start=2", "grid.scratch_cap=18", "grid.hpt=[2,6]",
        "grid.hpt_bn=[2]", "eval.knn_k=[3,5]", "eval.knn_t=[0.07]", "eval.linear_iters=20", "eval.linear_batch=32",
        "eval.batch_size=64"]


def scratch_budgets(results):
    return sorted({p["iterations"] for p in results["points"] if p["method"] == "scratch"})


def mtimes(out):
    return {p: p.stat().st_mtime_ns for p in [*out.glob("runs/*/backbone.pt"), *(out / EVALUATIONS).glob("*.json")]}


@pytest.fixture(scope="module")
def two_calls(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-gpu")
    out, data = root / "out", root / "data"
    cfg = load_preset(preset_path("gpu"), MINI)
    # a budget that holds scratch up to 6 iterations and not up to 18: the first call stops at 6
    fits, too_long = (gpu_cost.plan(gpu_cost.with_cap(cfg, cap))["total_s"] for cap in (6, 18))
    argv = ["demo", "--scale", "gpu", "--out", str(out), "--data", str(data), "--no-reference", *MINI]
    assert main([*argv, "--budget-s", f"{(fits + too_long) / 2:.1f}"]) == 0
    first = json.loads((out / "results.json").read_text())
    before = mtimes(out)
    assert main([*argv, "--parallel", "2"]) == 0  # the two new runs by two worker processes
    return first, json.loads((out / "results.json").read_text()), before, out


@pytest.mark.slow
def test_the_first_call_runs_every_path_within_its_budget(two_calls):
    first, _, before, out = two_calls
    assert first["preset"] == "gpu" and first["base"].endswith("demo-base.pt")  # the shipped base, checked
    assert first["base_training"]["sha256"] and first["base_training"]["arch"] == "resnet_micro"
    assert yaml.safe_load(first["config"])["grid"]["scratch_cap"] == 6  # what this call ran, recorded
    assert scratch_budgets(first) == [2, 6]  # extended x3 from its start, up to the fitted cap
    assert not first["convergence"]["converged"]  # two flat steps in a row need a third budget
    for method, grid in (("scratch", [2, 6]), ("hpt", [2, 6]), ("hpt-bn", [2])):
        for it in grid:
            seeds = sorted(p["seed"] for p in first["points"] if p["method"] == method and p["iterations"] == it)
            assert seeds == [0, 1], (method, it)
    assert {p["method"] for p in first["points"]} == {"direct", "random", "scratch", "hpt", "hpt-bn"}
    for p in first["points"]:
        assert all(0 <= p[split][m] <= 1 for split in ("val", "test") for m in ("knn", "linear"))
    # one stored evaluation per backbone: 10 runs, the base and a random init
    assert len([p for p in before if p.parent.name == EVALUATIONS]) == 12


@pytest.mark.slow
def test_the_second_call_trains_and_evaluates_only_what_is_left(two_calls):
    first, second, before, out = two_calls
    assert scratch_budgets(second) == [2, 6, 18]
    after = mtimes(out)
    assert {p: t for p, t in after.items() if p in before} == before  # nothing trained or evaluated twice
    new = sorted(str(p.relative_to(out)) for p in set(after) - set(before))
    assert [n for n in new if n.startswith("runs/")] == ["runs/scratch-18-s0/backbone.pt",
                                                         "runs/scratch-18-s1/backbone.pt"]
    assert len([n for n in new if n.startswith(EVALUATIONS)]) == 2
    def by_run(results):
        return {(p["method"], p["iterations"], p["seed"]): p["test"] for p in results["points"]}

    assert by_run(first).items() <= by_run(second).items()  # the first call's numbers, read back
    assert (out / "report.md").read_text() == render(second)
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
