"""The data flow end to end through the CLI, small: prep -> a 2-batch pretrain -> kNN.

It runs in the pinned suite and is the subset `make smoke-latest` runs on the newest torch
(.venv-latest): the calls where a new torch breaks first (Composer's trainer and checkpoint save,
torch.load of the backbone, each loader backend's hand-off to torch) each run once.
"""

from __future__ import annotations

import json

import pytest
import torch

from fasthpt.cli import main
from fasthpt.data import BACKENDS


@pytest.fixture(scope="module")
def prepped(tmp_path_factory, tiny_folder):
    out = tmp_path_factory.mktemp("smoke_data")
    assert main(["prep", "--dataset", "smoke", "--src", str(tiny_folder), "--out", str(out), "--val-frac", "0.2",
                 "--max-res", "64", "--workers", "1", "--no-progress"]) == 0
    return out / "smoke"


def test_prep_writes_both_formats(prepped):
    manifest = json.loads((prepped / "manifest.json").read_text())
    assert (prepped / "ffcv" / "train.beton").is_file()
    assert sorted(prepped.glob("wds/train-*.tar"))
    assert len(manifest["classes"]) == 4
    assert (manifest["splits"]["train"]["count"], manifest["splits"]["val"]["count"]) == (36, 12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_batch_pretrain_then_knn(prepped, tmp_path, capsys, backend):
    cfg = tmp_path / "smoke.yaml"
    cfg.write_text("name: smoke\nmodel: {arch: resnet_tiny, queue_size: 32}\nhpt: {base: none}\n")
    assert main(["pretrain", str(cfg), f"run_dir={tmp_path}", f"data.path={prepped}", f"data.backend={backend}",
                 "data.res=32", "data.batch_size=8", "data.workers=1", "train.max_duration=2ba",
                 "train.save_interval=2ba", "train.progress_bar=false", "train.console_log=false"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{"):])  # the run's summary, printed last
    assert result["iterations"] == 2 and result["backend"] == backend
    run = tmp_path / "smoke"
    backbone = torch.load(run / "backbone.pt", map_location="cpu", weights_only=True)
    assert any(torch.is_tensor(v) for v in backbone.values())
    assert sorted((run / "checkpoints").glob("*")), "Composer wrote no checkpoint"

    out = tmp_path / "knn.jsonl"
    assert main(["eval", "knn", "--backbone", str(run / "backbone.pt"), "--data", str(prepped), "--res", "32",
                 "--k", "5", "--backend", backend, "--workers", "1", "--no-progress", "--no-cache",
                 "--json", str(out)]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0.0 <= record["top1"] <= 1.0 and record["arch"] == "resnet_tiny"
