import json
from types import SimpleNamespace

import pytest
import torch

from fasthpt.callbacks import DataStall, JSONLLogger, KNNMonitor, SetEpoch
from fasthpt.hpt import apply_mode
from fasthpt.models.backbones import build_backbone
from fasthpt.models.moco import MoCo


class _Logger:
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step=None):
        self.rows.append(metrics)


def test_knn_monitor_measures_and_keeps_frozen_stages_in_eval_mode():
    torch.manual_seed(0)
    moco = MoCo(build_backbone("resnet_tiny"), dim=8, mlp_hidden=16, queue_size=16)
    apply_mode(moco, "full", freeze_stages=1)
    moco.train()
    # two well separated classes: constant images of value -1 and +1
    images = torch.cat([torch.full((8, 3, 16, 16), -1.0), torch.full((8, 3, 16, 16), 1.0)])
    labels = torch.tensor([0] * 8 + [1] * 8)
    loader = [(images[i:i + 4], labels[i:i + 4]) for i in range(0, 16, 4)]
    monitor = KNNMonitor(moco, lambda: (loader, loader), num_classes=2, interval=5, k=3)
    logger = _Logger()
    state = SimpleNamespace(timestamp=SimpleNamespace(batch=5))
    monitor.batch_end(state, logger)
    assert monitor.history == [(5, 1.0)] and logger.rows[0]["knn/acc"] == 1.0
    assert moco.training and not moco.backbone.bn1.training and not moco.backbone.layer1[0].bn1.training
    assert moco.backbone.layer2[0].bn1.training
    state.timestamp.batch = 7
    monitor.batch_end(state, logger)  # not on the interval: nothing measured
    assert len(monitor.history) == 1


def test_data_stall_is_wait_over_step_time():
    now = [0.0]  # a fake clock: the figure is arithmetic on timestamps, whatever the machine's speed
    stall, logger = DataStall(window=2, clock=lambda: now[0]), _Logger()
    for wait, work in ((0.02, 0.02), (0.02, 0.02), (0.0, 0.04)):
        stall.before_dataloader(None, logger)
        now[0] += wait
        stall.after_dataloader(None, logger)
        now[0] += work
    stall.before_dataloader(None, logger)
    assert logger.rows[0]["data/stall_frac"] == pytest.approx(0.5)
    assert logger.rows[0]["data/wait_s_per_batch"] == pytest.approx(0.02)
    assert stall.stall_frac == pytest.approx(0.04 / 0.12)


def test_data_stall_counts_every_wait_with_its_step():
    """Each epoch's last step closes at the epoch's end, so every batch's wait counts (an epoch
    start that makes the first batch wait included), and the fraction stays a ratio of like spans
    (it once reached 1.18 when a wait was counted without its step)."""
    now = [0.0]
    stall, logger = DataStall(window=100, clock=lambda: now[0]), _Logger()
    for epoch_waits in ((0.9, 0.1), (0.8, 0.0)):  # two epochs of two batches, each slow to start
        for wait in epoch_waits:
            stall.before_dataloader(None, logger)
            now[0] += wait
            stall.after_dataloader(None, logger)
            now[0] += 0.1  # the training step
        stall.epoch_end(None, logger)
        now[0] += 5.0  # epoch-end evaluation: neither a wait nor a step
    assert stall.stall_frac == pytest.approx(1.8 / 2.2)
    stall.fit_end(None, logger)  # nothing open: no change
    assert stall.stall_frac == pytest.approx(1.8 / 2.2)
    assert DataStall().stall_frac != DataStall().stall_frac  # nothing measured: NaN, printed as null


def test_jsonl_one_object_per_logged_step(tmp_path):
    log = JSONLLogger(tmp_path / "m.jsonl", interval=2)
    for step in range(5):
        log.log_metrics({"loss": torch.tensor(1.0 / (step + 1))}, step=step)
        log.log_metrics({"lr": 0.1}, step=step)
    log.log_metrics({"knn/acc": 0.5}, step=5)
    log.close(None, None)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    assert rows[1] == {"step": 2, "loss": pytest.approx(1 / 3), "lr": 0.1} and rows[-1]["knn/acc"] == 0.5


def test_set_epoch_positions_our_loader_at_epoch_starts_and_at_a_resume():
    seen = []
    loader = SimpleNamespace(set_epoch=lambda epoch, start_batch=0: seen.append((epoch, start_batch)))
    cb = SetEpoch(loader)
    cb.epoch_start(SimpleNamespace(timestamp=SimpleNamespace(epoch=3, batch_in_epoch=0)), None)
    cb.fit_start(SimpleNamespace(timestamp=SimpleNamespace(epoch=5, batch_in_epoch=7)), None)  # resumed mid-epoch
    cb.epoch_start(SimpleNamespace(timestamp=SimpleNamespace(epoch=5, batch_in_epoch=7)), None)  # not an epoch start
    assert seen == [(3, 0), (5, 7)]


def test_jsonl_after_resume_drops_redone_rows_and_merges_the_resumed_one(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"step": s, "loss": float(s)} for s in range(26)]
    rows[20]["knn/acc"] = 0.5  # measured after 20 batches, before the checkpoint at batch 20
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 26, "lo')  # last line cut short
    log = JSONLLogger(path, interval=1)
    log.fit_start(SimpleNamespace(timestamp=SimpleNamespace(batch=20)), None)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == list(range(20))
    for step in range(20, 23):  # the batches redone after the resume
        log.log_metrics({"loss": -1.0}, step=step)
    log.close(None, None)
    after = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in after] == list(range(23))
    assert after[20] == {"step": 20, "loss": -1.0, "knn/acc": 0.5} and after[19]["loss"] == 19.0


def test_jsonl_interval_zero_writes_only_knn_and_last_rows(tmp_path):
    log = JSONLLogger(tmp_path / "m.jsonl", interval=0)
    for step in range(4):
        log.log_metrics({"loss": 1.0}, step=step)
        if step == 2:
            log.log_metrics({"knn/acc": 0.5}, step=step)
    log.close(None, None)
    assert [json.loads(line)["step"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == [2, 3]
