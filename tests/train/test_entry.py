"""The Composer entry, fasthpt/train.py, run the ways a launcher runs it: as a file (its folder,
fasthpt/, first on sys.path) and as a module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "fasthpt" / "train.py"
OURS = {p.stem for p in ENTRY.parent.glob("*.py")} | {p.name for p in ENTRY.parent.iterdir() if p.is_dir()}


def _python(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_run_as_a_file_trains_and_imports_nothing_of_ours_by_a_bare_name(tmp_path, tiny_yaml):
    cfg = tiny_yaml("file", "train.max_duration=1ba", "train.save_interval=1ba")
    proc = _python("-X", "importtime", ENTRY, cfg, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"run_dir"')]
    assert summary["iterations"] == 1 and Path(summary["backbone"]).is_file()
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "fasthpt.trainer_setup" in names
    bare = sorted(n for n in names if n.split(".")[0] in OURS)  # e.g. `config` found as fasthpt/config.py
    assert bare == [], bare


def test_run_as_a_module_reaches_the_same_main(tmp_path):
    proc = _python("-m", "fasthpt.train", "--help", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "usage: composer -n N fasthpt/train.py CONFIG [key=value ...]"
