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
