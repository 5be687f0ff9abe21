"""A base that lacks backbone tensors is refused before HPT trains on a partly random network
(hpt.allow_missing=true starts them at init, listed); the kNN monitor stays off on one class."""

from __future__ import annotations

import pytest
import torch

from fasthpt.errors import UserError
from fasthpt.models.backbones import build_backbone
from fasthpt.train import pretrain


@pytest.fixture
def partial_base(tmp_path):
    state = {k: v for k, v in build_backbone("resnet_tiny").state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "no-layer4.pt"
    torch.save(state, path)
    return path


def test_a_base_missing_a_stage_is_refused_before_training(tmp_path, tiny_run, partial_base):
    with pytest.raises(UserError, match=r"lacks \d+ of the \d+ tensors .*all of layer4.*hpt.allow_missing=true"):
        pretrain(tiny_run("partial", f"hpt.base={partial_base}", "train.max_duration=1ba"))
    ckpt = tmp_path / "partial" / "checkpoints"
    assert not ckpt.exists() or not any(ckpt.iterdir())  # refused before any training


def test_allow_missing_starts_them_at_init(tmp_path, tiny_run, partial_base):
    result = pretrain(tiny_run("partial-ok", f"hpt.base={partial_base}", "hpt.allow_missing=true",
                               "train.max_duration=1ba", "train.knn_interval=0ba"))
    assert result["iterations"] == 1 and "missing" in result["base"]


def test_the_knn_monitor_stays_off_on_one_class(tiny_run, monkeypatch, caplog):
    import fasthpt.trainer_setup as ts

    cfg = tiny_run("one", "train.knn_interval=1ba")

    class OneClass:
        num_classes = 1

    monkeypatch.setattr(ts, "load_manifest", lambda path: OneClass())
    assert ts.knn_monitor(cfg, None, "cpu") is None
    assert "one class" in caplog.text
    with pytest.raises(UserError, match="stop_on_plateau needs the kNN monitor"):
        ts.knn_monitor(tiny_run("one2", "train.knn_interval=1ba", "train.stop_on_plateau=true"), None, "cpu")
