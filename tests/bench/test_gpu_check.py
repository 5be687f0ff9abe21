"""bench/gpu_check.sh --dry-run: every step of the GPU check wired on the CPU, nothing executed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import parse_only  # noqa: E402 (bench/parse_only.py)

STEPS = ["start", "install", "env", "train_synthetic", "prep", "train_ffcv", "train_dali", "train_groups", "loaders",
         "gpu_tests", "demo", "end"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OUT": str(tmp / "out"), "SCRATCH": str(tmp / "scratch"), "PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--bundle", str(tmp / "no-bundle")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in (tmp / "out" / "gpu_check.jsonl").read_text().splitlines()]
    return proc, {r["step"]: r for r in rows}, [r["step"] for r in rows], tmp


def test_every_step_is_wired_in_order(dry_run):
    proc, rows, order, _ = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert order == STEPS
    assert rows["env"]["status"] == "ok" and rows["end"]["status"] == "ok"
    assert all(rows[s]["status"] == "wired" for s in STEPS[1:-1] if s != "env"), rows
    assert rows["gpu_tests"]["detail"]["collected"] >= 1
    assert "none in" in rows["install"]["detail"]["bundle"]  # no bundle here: checked, nothing copied


def test_steps_fit_in_eight_minutes(dry_run):
    _, rows, _, _ = dry_run
    assert rows["start"]["limit_s"] == 480
    assert sum(rows[s]["limit_s"] for s in STEPS[1:-1]) <= 480
    assert all(rows[s]["limit_s"] > 0 for s in STEPS[1:-1])


def test_the_benchmarks_are_the_ones_asked_for(dry_run):
    _, rows, _, _ = dry_run
    loaders = " ".join(rows["loaders"]["cmd"])
    assert "--res 224" in loaders and "--device cuda" in loaders and "--backends ffcv,dali" in loaders
    for step in ("train_synthetic", "train_ffcv", "train_dali", "train_groups"):
        cmd = " ".join(rows[step]["cmd"])
        assert "--arch resnet50" in cmd and "train.precision=amp_bf16" in cmd and "--res 224" in cmd
        assert "--batch 128" in cmd and "channels_last" in cmd
        assert rows[step]["detail"]["train_rows"] == (2 if step == "train_synthetic" else 1)  # configs validated
    assert "--reference" in rows["train_synthetic"]["cmd"]  # the supervised step, in the same process
    assert "model.shuffle_bn=none" in rows["train_groups"]["cmd"]
    assert rows["train_ffcv"]["detail"]["parsed"]["backends"] == "ffcv"
    assert "--scale gpu" in " ".join(rows["demo"]["cmd"])  # the claim preset's first runs, timed


def test_the_dry_run_writes_nothing_but_its_report(dry_run):
    _, _, _, tmp = dry_run
    assert not (tmp / "scratch").exists()
    assert {p.name for p in (tmp / "out").iterdir()} <= {"gpu_check.jsonl", "gpu_check.log", "gpu_tests.xml"}


def test_parse_only_rejects_what_the_cli_would(capsys):
    assert parse_only.main(["bench", "loaders", "--data", "d", "--res", "224"]) == 0
    with pytest.raises(SystemExit) as exc:  # argparse: the flag is gone
        parse_only.main(["bench", "loaders", "--data", "d", "--no-such-flag"])
    assert exc.value.code == 2
    assert parse_only.main(["bench", "train", "--data", "synthetic", "train.precison=amp_bf16"]) == 2
    assert "unknown config key 'train.precison'" in capsys.readouterr().err
    assert parse_only.main(["frobnicate"]) == 2


# Stands in for the GPU machine's python3: fasthpt and pytest runs are canned (the loader
# benchmark fails, the demo outlasts its share), DALI does not import, the rest is real Python.
_STAND_IN = """#!/usr/bin/env bash
case "$1 $2" in
  "-m fasthpt.cli") [ "$3 $4" = "bench loaders" ] && exit 3; [ "$3" = demo ] && exec sleep 120; exit 0 ;;
  "-m pytest") echo "$*" > "$OUT/pytest-args"; exit 0 ;;
  "-c import nvidia.dali") exit 1 ;;
esac
exec {python} "$@"
"""


def test_a_real_run_records_each_outcome(tmp_path):
    stand_in = tmp_path / "python3"
    stand_in.write_text(_STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "SCRATCH": str(tmp_path / "scratch"), "PYTHON": str(stand_in),
           "GPU_CHECK_BUDGET_S": "1", "GPU_CHECK_FLOOR_S": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--no-install"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    rows = {r["step"]: r for r in map(json.loads, (out / "gpu_check.jsonl").read_text().splitlines())}
    assert proc.returncode == 1  # the loader benchmark failed
    status = {step: rows[step]["status"] for step in STEPS}
    assert status == {"start": "real", "install": "skipped", "env": "ok", "gpu_tests": "ok", "prep": "ok",
                      "loaders": "failed", "train_ffcv": "ok", "train_dali": "skipped", "train_synthetic": "ok",
                      "train_groups": "ok", "demo": "bounded", "end": "failed"}
    assert rows["loaders"]["rc"] == 3 and rows["demo"]["rc"] == 124
    assert "not dali" in (out / "pytest-args").read_text()  # DALI's gpu tests deselected, not failed
    assert "plan B" in rows["train_dali"]["detail"]


# ---- --claim: the paper's claim in its own call (configs/demo-gpu.yaml)

CLAIM_STEPS = ["start", "install", "env", "claim", "pack", "end"]


@pytest.fixture(scope="module")
def claim_dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_claim")
    env = {**os.environ, "OUT": str(tmp / "out"), "SCRATCH": str(tmp / "scratch"), "PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--claim", "--dry-run", "--bundle", str(tmp / "no-bundle")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in (tmp / "out" / "gpu_check.jsonl").read_text().splitlines()]
    return proc, {r["step"]: r for r in rows}, [r["step"] for r in rows], tmp


def test_the_claim_runs_the_gpu_preset_and_fits_its_budget_on_paper(claim_dry_run):
    proc, rows, order, tmp = claim_dry_run
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert order == CLAIM_STEPS
    assert all(rows[s]["status"] == "wired" for s in ("install", "claim", "pack")), rows
    cmd = " ".join(rows["claim"]["cmd"])
    assert "demo --scale gpu --budget-s" in cmd and str(tmp / "scratch" / "claim") in cmd
    plan = rows["claim"]["detail"]
    # the expected seconds of every step, from the measured rates, printed, and their sum within the 8 minutes
    for step in ("install", "env", "claim", "pack"):
        assert f"expected {step}" in proc.stdout
    assert plan["expected_s"]["claim"] == plan["total_s"] <= 0.8 * rows["claim"]["limit_s"]
    assert plan["expected_total_s"] == pytest.approx(sum(plan["expected_s"].values()), abs=0.2)
    assert plan["expected_total_s"] <= rows["start"]["limit_s"] == 480
    assert sum(rows[s]["limit_s"] for s in CLAIM_STEPS[1:-1]) <= 480
    # the whole experiment of the call: 3 seeds of every budget, both HPT grids, every evaluation
    assert {"start", "prep", "scratch", "hpt", "hpt-bn", "evaluation"} <= set(plan["phases_s"])
    assert plan["runs"] % 3 == 0 and plan["evaluations"] == plan["runs"] + 2
    assert plan["calls"][0]["scratch_cap"] == plan["scratch_cap"]
    assert not (tmp / "scratch").exists()


_CLAIM_STAND_IN = """#!/usr/bin/env bash
case "$1 $2 $3" in
  "-m fasthpt.cli demo")
    out=$(sed -n 's/.*--out \\([^ ]*\\).*/\\1/p' <<<"$*")
    ls "$out/runs" > "$OUT/seen-runs" 2>/dev/null
    mkdir -p "$out/runs/scratch-9-s0" "$out/evaluations"
    echo '{"config": "x"}' > "$out/runs/scratch-9-s0/demo_result.json"
    head -c 200000 /dev/urandom > "$out/runs/scratch-9-s0/backbone.pt"
    echo '{}' > "$out/evaluations/abc.json"
    echo report > "$out/report.md"; echo '{}' > "$out/results.json"
    exit 0 ;;
esac
exec {python} "$@"
"""


def test_a_claim_call_packs_its_runs_and_a_second_resumes_from_them(tmp_path):
    stand_in = tmp_path / "python3"
    stand_in.write_text(_CLAIM_STAND_IN.replace("{python}", sys.executable))
    stand_in.chmod(0o755)

    def call(name, *args):
        out = tmp_path / name
        env = {**os.environ, "OUT": str(out), "SCRATCH": str(tmp_path / f"scratch-{name}"), "PYTHON": str(stand_in),
               "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(["bash", "bench/gpu_check.sh", "--claim", "--no-install", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        rows = {r["step"]: r for r in map(json.loads, (out / "gpu_check.jsonl").read_text().splitlines())}
        return proc, rows, out

    proc, rows, first = call("first")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [rows[s]["status"] for s in CLAIM_STEPS] == ["real", "skipped", "ok", "ok", "ok", "ok"]
    assert rows["pack"]["detail"]["parts"] == 1
    assert {p.name for p in first.iterdir()} >= {"claim-report.md", "claim-results.json", "claim-runs.tar.0"}
    assert not (first / "seen-runs").read_text().strip()  # a first call starts with no runs
    carried = tmp_path / "carried"
    carried.mkdir()
    (carried / "claim-runs.tar.0").write_bytes((first / "claim-runs.tar.0").read_bytes())
    proc, rows, second = call("second", "--resume", str(carried), "--", "grid.scratch_cap=2700")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (second / "seen-runs").read_text().split() == ["scratch-9-s0"]  # unpacked before the demo ran
    assert rows["claim"]["cmd"][-1] == "grid.scratch_cap=2700"
    resumed = tmp_path / "scratch-second" / "claim"
    assert (resumed / "evaluations" / "abc.json").is_file()
    assert (resumed / "runs" / "scratch-9-s0" / "backbone.pt").stat().st_size == 200000


@pytest.mark.parametrize("args, needle", [
    (["--resume", "x"], "--resume and -- key=value go with --claim"),
    (["--", "grid.seeds=1"], "--resume and -- key=value go with --claim"),
    (["--claim", "--resume", "/nonexistent"], "holds no claim-runs.tar.* parts"),
])
def test_claim_arguments_are_checked_first(args, needle, tmp_path):
    proc = subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OUT": str(tmp_path / "out")}, timeout=60)
    assert proc.returncode == 2 and needle in proc.stderr
    assert not (tmp_path / "out").exists()
