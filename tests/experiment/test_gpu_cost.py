"""The GPU estimate of a demo preset (fasthpt/experiment/gpu_cost.py): its scaling rule, what it
counts, and that the shipped GPU preset fits its call on paper."""

import json
import math

import pytest

from fasthpt.cli import main
from fasthpt.errors import UserError
from fasthpt.experiment import gpu_cost as G
from fasthpt.experiment.cost import planned_jobs
from fasthpt.experiment.preset import load_preset, preset_path
from fasthpt.experiment.runs import RESULT

# forward FLOPs per image as torch's counter gives them (rounded): the fake keeps these tests fast
FLOPS = {("resnet50", 224): 8.17e9, ("resnet_tiny", 56): 1.05e8, ("resnet_micro", 32): 8.09e6, ("resnet18", 96): 6.66e8}


def fake_flops(arch, res):
    return FLOPS[(arch, res)]


def test_a_step_is_the_launch_floor_plus_flop_scaled_arithmetic():
    cfg = load_preset(preset_path("gpu"))
    s = G.step(cfg.pretrain, fake_flops)
    per_flop = G.H200_RN50_STEP_S / 128 / FLOPS[("resnet50", 224)]
    # the floor is the reference step (26.9 ms) less its own arithmetic (under 2% of it)
    assert s.floor_s == pytest.approx(64 / 2379 - 64 * FLOPS[("resnet_tiny", 56)] * per_flop)
    assert 0.98 * 64 / 2379 < s.floor_s < 64 / 2379
    assert s.flops_s == pytest.approx(cfg.pretrain.batch_size * FLOPS[("resnet_micro", 32)] * per_flop)
    assert s.seconds == pytest.approx(1825 / 1720 * (s.floor_s + s.flops_s))
    # FLOP scaling alone would promise ~1,000x ResNet-50's rate; the floor holds it to under 20,000 samples/s
    assert cfg.pretrain.batch_size / s.seconds < 20000 < cfg.pretrain.batch_size / s.flops_s / 10
    assert s.high_s == pytest.approx(1825 / 1720 * (2 * s.floor_s + 10 * s.flops_s))
    # at ResNet-50's own settings the arithmetic term is its measured step
    rn50 = load_preset(preset_path("gpu"), ["pretrain.arch=resnet50", "pretrain.res=224", "pretrain.batch_size=128"])
    assert G.step(rn50.pretrain, fake_flops).flops_s == pytest.approx(128 / 1825)


def test_the_flop_counter_sees_the_models_apart():
    ratio = G.flops("resnet_micro", 32) / G.flops("resnet50", 224)
    assert 5e-4 < ratio < 2e-3  # ~1/1,000: why FLOP scaling alone over-promises the small model


def test_the_plan_counts_every_planned_run_once_and_skips_finished_ones(tmp_path):
    cfg = load_preset(preset_path("gpu"))
    jobs = planned_jobs(cfg, [])
    plan = G.plan(cfg, [], tmp_path, fake_flops)
    s = G.step(cfg.pretrain, fake_flops)
    assert plan["runs"] == len(jobs) and plan["evaluations"] == len(jobs) + 2
    assert plan["training_s"] == pytest.approx(sum(j.iterations for j in jobs) * s.seconds, abs=0.1)
    assert math.isclose(plan["total_s"], sum(plan["phases_s"].values()), abs_tol=0.5)
    assert set(plan["phases_s"]) == {"start", "prep", "scratch", "hpt", "hpt-bn", "evaluation"}  # shipped base
    assert plan["high_s"] > plan["total_s"]
    # a finished run (a second call's carried runs): neither trained nor evaluated again
    longest = max((j for j in jobs if j.method == "scratch"), key=lambda j: j.iterations)
    (tmp_path / "runs" / longest.name).mkdir(parents=True)
    (tmp_path / "runs" / longest.name / RESULT).write_text("{}")
    again = G.plan(cfg, [], tmp_path, fake_flops)
    saved = G.HOST * (G.VM_FFCV_LOADER_S + G.VM_RUN_S) + longest.iterations * s.seconds
    assert again["phases_s"]["scratch"] == pytest.approx(plan["phases_s"]["scratch"] - saved, abs=0.1)
    assert again["evaluations"] == plan["evaluations"] - 1


def test_a_base_built_by_its_chain_is_planned_and_agrees_with_the_one_h200_run():
    cfg = load_preset(preset_path("large"))
    plan = G.plan(cfg, [], None, fake_flops)
    # on the H200, `demo --scale large` was stopped 173 s in, inside its base chain (bench/RESULTS.md)
    assert plan["phases_s"]["base"] > 173
    assert plan["phases_s"]["prep"] == pytest.approx((12000 + 50000 + 30000) / 1205, abs=0.1)


def test_a_backend_without_gpu_rates_is_refused_by_name():
    cfg = load_preset(preset_path("default"))  # DALI's CPU pipeline
    with pytest.raises(UserError, match="no measured GPU rate for pretrain.backend=dali"):
        G.plan(cfg, [], None, fake_flops)


def test_the_gpu_preset_is_reached_in_calls_that_fit_on_paper():
    """`gpu_check.sh --claim` gives the demo 370 s at the least (480 less the install, env and pack
    limits) and fits it to 80% of them (the estimate's margin): the first call holds both HPT grids
    and scratch's first budget, each later call more scratch budgets, up to the preset's cap."""
    cfg = load_preset(preset_path("gpu"))
    plans = G.calls(cfg, [], 0.8 * 370)
    assert plans[-1]["scratch_cap"] == cfg.grid.scratch_cap, [G.describe(p) for p in plans]
    assert all(p["total_s"] <= 0.8 * 370 for p in plans)
    first, later = plans[0], plans[1:]
    assert first["runs"] >= cfg.grid.seeds * (len(cfg.grid.hpt) + len(cfg.grid.hpt_bn) + 1)
    assert all(p["phases_s"]["hpt"] == p["phases_s"]["hpt-bn"] == 0 and p["runs"] % cfg.grid.seeds == 0 for p in later)
    assert len(plans) <= 3


def test_demo_plan_prints_the_estimate_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--scale", "gpu", "--plan", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("expected on one H200") and "scratch" in text and "total" in text
    assert main(["demo", "--scale", "gpu", "--plan", "--json", "--out", str(out), "grid.seeds=1"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["runs"] == len(planned_jobs(load_preset(preset_path("gpu"), ["grid.seeds=1"]), []))
    assert not out.exists()
    assert main(["demo", "--scale", "gpu", "--json", "--out", str(out)]) == 2
    assert "--json goes with --plan" in capsys.readouterr().err


def test_a_call_is_fitted_to_its_budget_and_the_calls_go_on_from_each_other():
    cfg = load_preset(preset_path("gpu"), ["grid.scratch_start=100", "grid.scratch_cap=2700"])
    totals = {cap: G.plan(G.with_cap(cfg, cap), [], None, fake_flops)["total_s"] for cap in (100, 300, 900, 2700)}
    assert totals[100] < totals[300] < totals[900] < totals[2700]
    cap, plan = G.fit(cfg, [], (totals[300] + totals[900]) / 2, None, fake_flops)
    assert cap == 300 and plan["total_s"] == totals[300]
    cap, plan = G.fit(cfg, [], totals[100] / 2, None, fake_flops)  # nothing fits: the first budget, over budget
    assert cap == 100 and plan["total_s"] > totals[100] / 2
    assert [c["scratch_cap"] for c in G.calls(cfg, [], totals[2700], None, fake_flops)] == [2700]
    budget = (totals[300] + totals[900]) / 2
    plans = G.calls(cfg, [], budget, None, fake_flops)
    caps = [c["scratch_cap"] for c in plans]
    assert caps[0] == 300 and caps == sorted(set(caps)) and all(c["total_s"] <= budget for c in plans)
    # a later call trains the new scratch budgets only: 3 seeds each, HPT's grids already done
    assert all(c["runs"] % 3 == 0 and "hpt" not in c["phases_s"] or c["phases_s"]["hpt"] == 0 for c in plans[1:])


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_a_budget_that_is_not_a_time_is_one_line(value, tmp_path, capsys):
    assert main(["demo", "--scale", "gpu", "--plan", "--budget-s", value, "--out", str(tmp_path / "o")]) == 2
    assert "--budget-s must be a number of seconds > 0" in capsys.readouterr().err
