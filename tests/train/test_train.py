"""End-to-end pretraining on the tiny dataset: run folder, kNN monitor, autoresume, stages,
non-finite loss, CLI errors, and multi-process launches through Composer's launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fasthpt.cli import main as cli_main
from fasthpt.config import load_config
from fasthpt.errors import UserError
from fasthpt.models.backbones import load_backbone
from fasthpt.train import pretrain

REPO = Path(__file__).resolve().parents[2]


def _backbone(path):
    return torch.load(path, weights_only=True)


def test_pretrain_writes_run_folder_with_knn_and_metrics(tmp_path, tiny_run):
    cfg = tiny_run("r1", "train.max_duration=4ba", "train.knn_interval=2ba", "train.save_interval=2ba",
               "train.tensorboard=true")
    result = pretrain(cfg)
    run = tmp_path / "r1"
    assert result["iterations"] == 4 and result["backend"] == "torch" and result["run_dir"] == str(run)
    assert 0.0 <= result["data_stall_frac"] <= 1.0 and result["samples_per_s"] > 0
    assert load_config(run / "config.yaml") == cfg
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/train/total" in r for r in rows)
    knn = [r["knn/acc"] for r in rows if "knn/acc" in r]
    assert len(knn) >= 2 and all(0.0 <= a <= 1.0 for a in knn)
    model, report = load_backbone(result["backbone"])
    assert report.arch == "resnet_tiny" and report.missing == []
    assert list((run / "checkpoints").glob("ep*-ba4-rank0.pt"))
    assert list((run / "tensorboard").rglob("events.out.tfevents*"))


def test_zero_intervals_switch_checkpoints_and_log_rows_off(tmp_path, tiny_run):
    cfg = tiny_run("quiet", "train.max_duration=3ba", "train.save_interval=0ba", "train.log_interval=0ba",
                   "train.console_log=true")
    assert pretrain(cfg)["iterations"] == 3
    rows = [json.loads(line) for line in (tmp_path / "quiet" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] >= 2  # the last step only
    assert not list((tmp_path / "quiet" / "checkpoints").glob("ep*.pt"))


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("backend", ["torch", "dali", "ffcv"])
def test_autoresume_continues_without_losing_or_repeating_batches(tmp_path, tiny_run, monkeypatch, backend):
    """Resumed mid-epoch in the second epoch (4 batches per epoch; the checkpoint at batch 6 is
    epoch 1, batch 2), a run ends with the same weights as the uninterrupted one: the loader
    delivers the rest of epoch 1 and the random state (the key encoder's BN groups) is restored."""
    from fasthpt.data import available_backends

    if available_backends()[backend]:
        pytest.skip(available_backends()[backend])
    extra = ("train.max_duration=8ba", "train.save_interval=3ba", f"data.backend={backend}")
    whole = pretrain(tiny_run("r", *extra, run_dir=tmp_path / "a"))

    from fasthpt.models.moco import ComposerMoCo

    calls = {"n": 0}
    original = ComposerMoCo.forward

    def crash_on_eighth(self, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # batch 8: after the checkpoint at batch 6
            raise _Crash("killed")
        return original(self, batch)

    monkeypatch.setattr(ComposerMoCo, "forward", crash_on_eighth)
    with pytest.raises(_Crash):
        pretrain(tiny_run("r", *extra, run_dir=tmp_path / "b"))
    monkeypatch.setattr(ComposerMoCo, "forward", original)
    resumed = pretrain(tiny_run("r", *extra, run_dir=tmp_path / "b"))
    assert resumed["iterations"] == 8 and resumed["iterations_this_launch"] == 2
    a, b = _backbone(whole["backbone"]), _backbone(resumed["backbone"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)

    if backend != "torch":  # what follows does not depend on the loader
        return
    # launching a finished run again trains nothing and hands back the same backbone
    again = pretrain(tiny_run("r", *extra, run_dir=tmp_path / "b"))
    assert again["iterations"] == 8 and again["iterations_this_launch"] == 0
    c = _backbone(again["backbone"])
    assert all(torch.equal(b[key], c[key]) for key in b)


def test_stages_chain_base_source_target(tmp_path, ssl_data, tiny_run):
    stages = (f"stages=[{{name: source, data: '{ssl_data}', max_duration: 2ba}},"
              f" {{name: target, data: '{ssl_data}', max_duration: 2ba, mode: bn}}]")
    result = pretrain(tiny_run("chain", stages))
    source, target = result["stages"]
    assert result["iterations"] == 4 and source["iterations"] == 2 and target["iterations"] == 2
    assert str(tmp_path / "chain" / "source" / "backbone.pt") in target["base"]
    final = _backbone(result["backbone"])
    for key, value in _backbone(target["backbone"]).items():
        assert torch.equal(final[key], value)
    # every stage remembers its data: where it was (absolute) and what it looked like
    import json

    from fasthpt.manifest import load_manifest

    for stage in ("source", "target"):
        recorded = json.loads((tmp_path / "chain" / stage / "data.json").read_text())
        assert recorded["resolved"] == str(ssl_data.resolve()) and recorded["mean"] == load_manifest(ssl_data).mean
    # HPT-BN target stage: its convs are exactly the source stage's.
    src = _backbone(source["backbone"])
    assert torch.equal(final["layer2.0.conv1.weight"], src["layer2.0.conv1.weight"])
    assert not torch.equal(final["layer2.0.bn1.weight"], src["layer2.0.bn1.weight"])


def test_nonfinite_loss_stops_with_checkpoint(tmp_path, tiny_run, monkeypatch):
    import fasthpt.models.moco as moco_module

    monkeypatch.setattr(moco_module, "infonce", lambda q, k, queue, t: q.sum() * float("nan"))
    with pytest.raises(UserError, match="loss became nan at batch 0"):
        pretrain(tiny_run("nan", "train.max_duration=3ba"))
    assert list((tmp_path / "nan" / "checkpoints").glob("nonfinite-ba0-rank0.pt"))


@pytest.mark.parametrize("case", ["bad_key", "missing_base", "wrong_arch"])
def test_cli_errors_are_one_line_exit_2(tmp_path, tiny_yaml, capsys, case):
    cfg = tiny_yaml("cli", "train.max_duration=2ba")
    overrides = {"bad_key": ["optim.lrr=0.1"], "missing_base": [f"hpt.base={tmp_path / 'none.pth'}"]}
    if case == "wrong_arch":
        import torchvision

        torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
        overrides[case] = [f"hpt.base={tmp_path / 'r18.pth'}"]
    code = cli_main(["pretrain", str(cfg), *overrides[case]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    needle = {"bad_key": "optim.lrr", "missing_base": "not found", "wrong_arch": "holds a resnet18"}[case]
    assert needle in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "cli").exists()  # a refused run leaves no run folder behind


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, cfg, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on 2 cores: no oversubscription
    cmd = [sys.executable, "-m", "composer.cli.launcher", *args, str(REPO / "fasthpt" / "train.py"), str(cfg)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _summary(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith('{"run_dir"')]
    assert lines, output[-3000:]
    return json.loads(lines[-1])


@pytest.mark.slow
def test_composer_two_processes_keep_key_encoders_identical_and_share_the_global_batch(tmp_path, tiny_yaml):
    cfg = tiny_yaml("ddp", "data.global_batch=16", "data.batch_size=64", "train.max_duration=3ba",
                    "train.save_interval=3ba")
    proc = _launch(["-n", "2", "--master_port", str(_port())], cfg, tmp_path)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    result = _summary(out)
    assert result["world_size"] == 2 and result["ranks_in_sync"] is True and result["iterations"] == 3
    assert (result["batch_per_process"], result["global_batch"]) == (8, 16)  # the global batch, shared
    assert Path(result["backbone"]).is_file()


@pytest.mark.slow
def test_two_single_process_launches_act_as_two_nodes(tmp_path, tiny_yaml):
    cfg = tiny_yaml("nodes", "train.max_duration=2ba", "train.save_interval=2ba")
    port = str(_port())
    common = ["-n", "1", "--world_size", "2", "--master_addr", "127.0.0.1", "--master_port", port]
    procs = [_launch([*common, "--node_rank", str(rank)], cfg, tmp_path) for rank in (0, 1)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    result = _summary(outs[0])
    assert result["world_size"] == 2 and result["ranks_in_sync"] is True and result["iterations"] == 2


def test_pretrain_cli_takes_nproc_anywhere_after_config():
    from fasthpt.pretrain import _split_nproc

    assert _split_nproc(["a=1", "--nproc", "3", "b=2"], 1) == (["a=1", "b=2"], 3)
    assert _split_nproc(["--nproc=2"], 1) == ([], 2) and _split_nproc(["x=1"], 1) == (["x=1"], 1)
    with pytest.raises(UserError):
        _split_nproc(["--nproc"], 1)


def test_a_run_derives_its_batch_from_the_global_batch_and_says_so(tmp_path, tiny_run, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="fasthpt.train")
    result = pretrain(tiny_run("global", "data.global_batch=16", "data.batch_size=64", "train.max_duration=2ba",
                               "train.save_interval=0ba", "train.log_interval=0ba"))
    assert (result["batch_per_process"], result["global_batch"], result["world_size"]) == (16, 16, 1)
    assert "data.global_batch 16 on 1 process(es): data.batch_size 16 per process, 2 BN group(s) of 8" in caplog.text
    saved = (tmp_path / "global" / "config.yaml").read_text()
    assert "global_batch: 16" in saved and "batch_size: 16" in saved  # what it trained with


def test_a_long_cpu_run_says_its_cost_after_its_first_timed_batches(tmp_path, tiny_run, monkeypatch):
    """A fake clock (1000 s per reading) makes every batch 1000 s: after the warm-up batch and one
    timed batch (past the 10 s that suffice) the run says 6 x 1000 s, before its third batch."""
    from composer.core import Callback

    from fasthpt import forecast
    from fasthpt.train import run_stage

    readings = iter(range(10**6))
    monkeypatch.setattr(forecast, "now", lambda: 1000.0 * next(readings))
    events = []
    monkeypatch.setattr(forecast, "say_note", lambda message: events.append(message))

    class Batches(Callback):
        def batch_end(self, state, logger):
            events.append("batch")

    run_stage(tiny_run("cost", "train.max_duration=6ba", "train.save_interval=0ba"), callbacks=(Batches(),))
    assert events[:2] == ["batch", "batch"] and events[3:] == ["batch"] * 4
    assert events[2].startswith("this pretraining run will take about 1.7 h on this CPU: 6 batches at 1000.00 s "
                                "each (from 1 timed step after a warm-up one); faster: fewer batches")
