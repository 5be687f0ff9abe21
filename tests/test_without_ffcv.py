"""The core flow of a `pip install .` without the ffcv extra: prep -> a 2-batch pretrain -> kNN.

Each command runs as `python -m fasthpt.cli` in a fresh process whose sitecustomize sets
``sys.modules["ffcv"] = None`` (and numba's, which only FFCV brings): `import ffcv` then fails as it
does where FFCV is not installed, in that process and in every process it starts (PYTHONPATH is
inherited). Prep writes WebDataset shards only and says so once, `backend=auto` resolves to dali or
torch, and asking for FFCV by name is one line naming the install, with no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 'import sys\nfor _name in ("ffcv", "numba"):\n    sys.modules[_name] = None\n'
NOTE = "note: FFCV is not installed"
INSTALL = "pip install 'fasthpt[ffcv]'"


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory) -> dict:
    site = tmp_path_factory.mktemp("no_ffcv_site")
    (site / "sitecustomize.py").write_text(BLOCK)
    return {**os.environ, "PYTHONPATH": str(site)}


def fasthpt(env: dict, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fasthpt.cli", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def prep(blocked_env, tmp_path_factory, tiny_folder) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("no_ffcv_data")
    proc = fasthpt(blocked_env, "prep", "--dataset", "noffcv", "--src", tiny_folder, "--out", out,
                   "--max-res", "64", "--workers", "1", "--no-progress")
    return out / "noffcv", proc


def test_the_block_holds(blocked_env):
    proc = subprocess.run([sys.executable, "-c", "import ffcv"], env=blocked_env, capture_output=True, text=True)
    assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr


def test_prep_writes_shards_only_and_says_so_once(prep):
    data, proc = prep
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith(NOTE)]
    assert len(notes) == 1 and INSTALL in notes[0]
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["formats"] == ["wds"] and "ffcv" not in manifest["files"]
    assert not (data / "ffcv").exists() and sorted(data.glob("wds/train-*.tar"))


def test_auto_pretrains_two_batches_and_knn_evaluates(prep, blocked_env, tmp_path):
    data, _ = prep
    cfg = tmp_path / "noffcv.yaml"
    cfg.write_text("name: noffcv\nmodel: {arch: resnet_tiny, queue_size: 32}\nhpt: {base: none}\n")
    proc = fasthpt(blocked_env, "pretrain", cfg, f"run_dir={tmp_path}", f"data.path={data}", "data.backend=auto",
                   "data.res=32", "data.batch_size=8", "data.workers=1", "train.max_duration=2ba",
                   "train.progress_bar=false", "train.console_log=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])  # the run's summary, printed last
    assert result["iterations"] == 2 and result["backend"] in ("dali", "torch")

    out = tmp_path / "knn.jsonl"
    proc = fasthpt(blocked_env, "eval", "knn", "--backbone", tmp_path / "noffcv" / "backbone.pt", "--data", data,
                   "--res", "32", "--k", "5", "--workers", "1", "--no-progress", "--no-cache", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0.0 <= record["top1"] <= 1.0


@pytest.mark.parametrize("command", ["prep", "pretrain"])
def test_asking_for_ffcv_is_one_line_naming_the_install(prep, blocked_env, tmp_path, tiny_folder, command):
    data, _ = prep
    if command == "prep":
        argv = ["prep", "--dataset", "x", "--src", tiny_folder, "--out", tmp_path, "--formats", "ffcv",
                "--workers", "1", "--no-progress"]
    else:
        cfg = tmp_path / "x.yaml"
        cfg.write_text("name: x\nmodel: {arch: resnet_tiny, queue_size: 32}\nhpt: {base: none}\n")
        argv = ["pretrain", cfg, f"run_dir={tmp_path}", f"data.path={data}", "data.backend=ffcv", "data.res=32",
                "data.batch_size=8", "data.workers=1", "train.max_duration=2ba", "train.progress_bar=false"]
    proc = fasthpt(blocked_env, *argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fasthpt {command}: error:") and "ffcv" in last and "pip install" in last
    if command == "prep":
        assert proc.stderr.strip() == last and INSTALL in last
        assert not (tmp_path / "x").exists()


def test_bench_loaders_reports_ffcv_skipped_with_the_install(prep, blocked_env):
    data, _ = prep
    proc = fasthpt(blocked_env, "bench", "loaders", "--data", data, "--backends", "ffcv", "--no-decode",
                   "--warmup", "0", "--batches", "1", "--repeats", "1", "--res", "32", "--batch", "4",
                   "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("ffcv")]
    assert "skipped:" in row and "pip install" in row
