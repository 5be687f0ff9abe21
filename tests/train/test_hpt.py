from pathlib import Path

import pytest
import torch
from torch import nn

from fasthpt.config import load_config
from fasthpt.errors import UserError
from fasthpt.hpt import apply_mode, stage_configs
from fasthpt.models.backbones import build_backbone
from fasthpt.models.moco import ComposerMoCo, MoCo
from fasthpt.trainer_setup import build_optimizer


def _step(mode, freeze_stages=0):
    torch.manual_seed(0)
    moco = MoCo(build_backbone("resnet_tiny"), dim=16, mlp_hidden=32, queue_size=64)
    apply_mode(moco, mode, freeze_stages)
    moco.train()
    cfg = load_config(None, [])
    opt = build_optimizer(moco, cfg, global_batch=256)
    for g in opt.param_groups:
        g["lr"] = 0.5  # large enough that any trained tensor visibly moves
    before = {k: v.clone() for k, v in moco.encoder_q.state_dict().items()}
    model = ComposerMoCo(moco)
    loss = model.loss(model((torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32))), None)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = moco.encoder_q.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return moco, changed


def _kinds(moco):
    """state_dict key -> 'conv' | 'norm' | 'head' for the query encoder."""
    kinds = {}
    for name, module in moco.encoder_q.named_modules():
        for key in list(module.state_dict(keep_vars=True).keys()):
            if "." in key:
                continue
            full = f"{name}.{key}" if name else key
            if name.startswith("head"):
                kinds[full] = "head"
            elif isinstance(module, nn.Conv2d):
                kinds[full] = "conv"
            elif isinstance(module, nn.BatchNorm2d):
                kinds[full] = "norm"
    return kinds


def test_hpt_bn_step_changes_only_norms_and_head():
    moco, changed = _step("bn")
    kinds = _kinds(moco)
    assert all(kinds[k] in ("norm", "head") for k in changed), sorted(k for k in changed if kinds[k] == "conv")
    norm_affine = {k for k, v in kinds.items() if v == "norm" and k.endswith(("weight", "bias"))}
    running = {k for k, v in kinds.items() if v == "norm" and k.endswith(("running_mean", "running_var"))}
    head = {k for k, v in kinds.items() if v == "head"}
    assert norm_affine <= changed and running <= changed and head <= changed
    assert all(not p.requires_grad for n, p in moco.encoder_q.named_parameters() if kinds[n] == "conv")


def test_full_mode_trains_convs_too():
    moco, changed = _step("full")
    kinds = _kinds(moco)
    assert any(kinds[k] == "conv" for k in changed)


def test_freeze_stages_keeps_stem_and_first_stages_and_their_statistics():
    moco, changed = _step("full", freeze_stages=2)
    stem_and_first = ("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2")
    frozen = [k for k in _kinds(moco) if k.startswith(stem_and_first)]
    assert frozen and not (set(frozen) & changed)
    assert any(k.startswith("backbone.layer3") for k in changed)
    assert not moco.encoder_q.backbone.layer1[0].bn1.training and moco.encoder_q.backbone.layer3[0].bn1.training


def test_bad_mode_is_user_error():
    moco = MoCo(build_backbone("resnet_tiny"), dim=8, queue_size=16)
    with pytest.raises(UserError):
        apply_mode(moco, "partial")
    with pytest.raises(UserError):
        apply_mode(moco, "full", freeze_stages=7)


def test_stages_chain_backbones(tmp_path):
    stages = "stages=[{name: source, data: d1, max_duration: 7ba}, {name: target, data: d2, mode: bn}]"
    cfg = load_config(None, [f"run_dir={tmp_path}", "name=chain", "hpt.base=none", stages])
    first, second = stage_configs(cfg)
    assert first.run_path == tmp_path / "chain" / "source" and first.data.path == "d1"
    assert first.train.max_duration == "7ba" and first.hpt.base == "none"
    assert second.hpt.base == str(tmp_path / "chain" / "source" / "backbone.pt") and second.hpt.mode == "bn"



def _second_stage_data(tmp_path, ssl_data, case: str) -> Path:
    """Stage 2's data folder, broken as ``case`` says."""
    import json
    import shutil

    from tiny_images import write_tiny_folder

    from dataprep import prepare

    if case == "missing":
        return tmp_path / "nowhere"
    if case == "too_few":  # 4 train images, fewer than a batch of 8
        src = write_tiny_folder(tmp_path / "few_src", per_class=1, size=16)
        return prepare("few", out=tmp_path, src=src, val_frac=0, test_frac=0, formats=("wds",), workers=1,
                       progress=False)
    data = tmp_path / "d2"
    shutil.copytree(ssl_data, data, ignore=shutil.ignore_patterns(".cache"))
    raw = json.loads((data / "manifest.json").read_text())
    if case == "no_manifest":
        (data / "manifest.json").unlink()
        return data
    if case == "no_val":
        del raw["splits"]["val"]
    if case == "no_ffcv":
        raw["formats"] = ["wds"]
        raw["files"].pop("ffcv", None)
    (data / "manifest.json").write_text(json.dumps(raw))
    return data


@pytest.mark.parametrize("case, extra, needle", [
    ("missing", (), "data folder not found"),
    ("no_manifest", (), "has no manifest.json"),
    ("no_val", ("train.knn_interval=1ba",), "no split 'val'"),
    ("too_few", (), "holds 4 train images, fewer than one batch of data.batch_size 8"),
    ("no_ffcv", ("data.backend=ffcv",), "ffcv"),
])
def test_every_stage_data_is_checked_before_the_first_stage_trains(tmp_path, ssl_data, tiny_run, case, extra, needle):
    from fasthpt.train import pretrain

    second = _second_stage_data(tmp_path, ssl_data, case)
    stages = (f"stages=[{{name: source, data: '{ssl_data}', max_duration: 2ba}},"
              f" {{name: target, data: '{second}', max_duration: 2ba}}]")
    with pytest.raises(UserError) as err:
        pretrain(tiny_run("chain", stages, *extra))
    assert str(err.value).startswith("stage 'target': ") and needle in str(err.value), str(err.value)
    assert not (tmp_path / "chain").exists()  # stage 1 never started
