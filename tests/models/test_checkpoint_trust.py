"""Base checkpoints are read as data: a file that pickles code is refused (and the code never runs)
unless the user opts in; a real Composer checkpoint of a fasthpt run still loads; a base holding
NaN / inf is refused before training."""

from __future__ import annotations

import logging
import os
import shlex

import pytest
import torch

from fasthpt.config import load_config
from fasthpt.errors import UserError
from fasthpt.models.backbones import build_backbone, load_backbone

TINY = ["data.backend=torch", "data.res=32", "data.batch_size=8", "data.workers=0", "model.arch=resnet_tiny",
        "model.queue_size=64", "model.dim=16", "model.mlp_hidden=32", "train.progress_bar=false"]


class RunsShell:
    """Unpickling this runs a shell command: what a hostile checkpoint downloaded from the internet does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


class Benign:
    """A plain Python object in a checkpoint: harmless, but not readable as weights only."""

    def __init__(self):
        self.epoch = 3


def write_evil(path, marker, zipfile=True):
    """A valid resnet_tiny state_dict plus one object that creates ``marker`` when unpickled."""
    obj = {"state_dict": build_backbone("resnet_tiny").state_dict(), "extra": RunsShell(marker)}
    torch.save(obj, path, _use_new_zipfile_serialization=zipfile)
    return path


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_code_running_checkpoint_is_refused_and_its_code_never_runs(tmp_path, zipfile):
    marker = tmp_path / "pwned"
    evil = write_evil(tmp_path / "evil.pt", marker, zipfile)
    with pytest.raises(UserError) as exc:
        load_backbone(str(evil), "resnet_tiny")
    msg = _one_line(exc)
    assert str(evil) in msg and "refused" in msg and "system" in msg
    assert "--trust-checkpoint" in msg and "hpt.trust_checkpoint=true" in msg
    assert not marker.exists()


def test_trust_opt_in_loads_a_non_tensor_pickle_with_a_warning(tmp_path, caplog):
    weights = build_backbone("resnet_tiny").state_dict()
    path = tmp_path / "with_object.pt"
    torch.save({"model": weights, "meta": Benign()}, path)
    with pytest.raises(UserError) as exc:
        load_backbone(str(path))
    assert "Benign" in _one_line(exc) and "--trust-checkpoint" in str(exc.value)
    with caplog.at_level(logging.WARNING, logger="fasthpt.models.checkpoint_formats"):
        model, report = load_backbone(str(path), trust=True)
    assert report.arch == "resnet_tiny" and report.loaded == len(weights) and report.missing == []
    assert torch.equal(model.state_dict()["layer3.0.conv1.weight"], weights["layer3.0.conv1.weight"])
    assert any("trusted" in r.getMessage() and "Benign" in r.getMessage() for r in caplog.records)


def test_plain_state_dict_needs_no_opt_in_and_logs_no_warning(tmp_path, caplog):
    path = tmp_path / "plain.pt"
    torch.save(build_backbone("resnet_tiny").state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="fasthpt.models.checkpoint_formats"):
        _, report = load_backbone(str(path), trust=True)
    assert report.format == "state_dict" and not caplog.records


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="empty.pt: cannot be read as a PyTorch checkpoint"):
        load_backbone(str(tmp_path / "empty.pt"))
    with pytest.raises(UserError, match="junk.pt: cannot be read as a PyTorch checkpoint") as exc:
        load_backbone(str(tmp_path / "junk.pt"), trust=True)
    _one_line(exc)


def test_nan_base_is_refused_naming_file_count_and_first_key(tmp_path):
    state = build_backbone("resnet_tiny").state_dict()
    state["layer2.0.conv1.weight"][0, 0, :2, 0] = float("nan")  # 2 values
    state["layer4.0.bn1.running_var"][:3] = float("inf")  # 3 values
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(UserError) as exc:
        load_backbone(str(tmp_path / "nan.pt"), "resnet_tiny")
    msg = _one_line(exc)
    assert str(tmp_path / "nan.pt") in msg and "5 NaN/inf values in 2 tensors" in msg
    assert "first: layer2.0.conv1.weight" in msg


def test_real_composer_checkpoint_of_a_fasthpt_run_loads_as_base(tmp_path, tiny_data):
    from fasthpt.train import pretrain

    cfg = load_config(None, [f"run_dir={tmp_path}", "name=r", f"data.path={tiny_data}", *TINY,
                             "train.max_duration=1ba", "train.save_interval=1ba"])
    result = pretrain(cfg)
    (ckpt,) = (tmp_path / "r" / "checkpoints").glob("ep*-ba1-rank0.pt")
    # Composer pickles more than tensors (numpy RNG state, timedelta, TorchVersion): the allow-list is needed
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt))
    model, report = load_backbone(str(ckpt), "resnet_tiny")
    assert report.format == "composer" and report.missing == [] and report.unexpected == []
    saved = torch.load(result["backbone"], weights_only=True)
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_pretrain_refuses_code_running_base_before_any_run_folder(tmp_path, tiny_data):
    from fasthpt.train import pretrain

    marker = tmp_path / "pwned"
    evil = write_evil(tmp_path / "evil.pt", marker)
    cfg = load_config(None, [f"run_dir={tmp_path / 'runs'}", "name=r", f"data.path={tiny_data}", *TINY,
                             f"hpt.base={evil}", "train.max_duration=1ba"])
    with pytest.raises(UserError) as exc:
        pretrain(cfg)
    assert "hpt.trust_checkpoint=true" in _one_line(exc)
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_pretrain_config_opt_in_reaches_the_loader(tmp_path, tiny_data):
    from fasthpt.trainer_setup import build_model

    path = tmp_path / "with_object.pt"
    weights = build_backbone("resnet_tiny").state_dict()
    torch.save({"model": weights, "meta": Benign()}, path)
    base = [f"data.path={tiny_data}", *TINY, f"hpt.base={path}"]
    with pytest.raises(UserError, match="refused"):
        build_model(load_config(None, base), "cpu")
    moco, report = build_model(load_config(None, [*base, "hpt.trust_checkpoint=true"]), "cpu")
    assert report.loaded == len(weights)
    assert torch.equal(moco.backbone.state_dict()["conv1.weight"], weights["conv1.weight"])
