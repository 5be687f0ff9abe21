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
    assert "--scale large" in " ".join(rows["demo"]["cmd"])


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
           "GPU_CHECK_BUDGET_S": "1", "CUDA_VISIBLE_DEVICES": ""}
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
