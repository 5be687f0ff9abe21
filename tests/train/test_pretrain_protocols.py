"""The authors' pretraining protocol: weight decay on every parameter, the neck's init, and how many
BN groups (emulated devices) a run gets."""

import pytest
import torch
from torch import nn

from fasthpt.config import bn_groups, load_config
from fasthpt.errors import UserError
from fasthpt.models.backbones import build_backbone
from fasthpt.models.moco import MoCo, mlp_head
from fasthpt.trainer_setup import build_optimizer


def _moco():
    torch.manual_seed(0)
    return MoCo(build_backbone("resnet_tiny"), dim=8, mlp_hidden=16, queue_size=16)


def _decay(opt) -> dict[int, float]:
    return {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}


def test_weight_decay_reaches_every_parameter_by_default():
    moco = _moco()
    opt = build_optimizer(moco, load_config(None, ["optim.weight_decay=0.0001"]), global_batch=256)
    decay = _decay(opt)
    params = list(moco.encoder_q.parameters())
    assert len(decay) == len(params) and set(decay.values()) == {0.0001}
    bn = moco.backbone.layer1[0].bn1  # norm weights and biases are decayed too (MoCo, OpenSelfSup)
    assert decay[id(bn.weight)] == decay[id(bn.bias)] == 0.0001


def test_norm_and_bias_exclusion_is_an_option_chosen_by_shape():
    moco = _moco()
    opt = build_optimizer(moco, load_config(None, ["optim.wd_norm_bias=false"]), global_batch=256)
    decay = _decay(opt)
    for p in moco.encoder_q.parameters():
        assert decay[id(p)] == (1e-4 if p.ndim > 1 else 0.0)
    downsample_bn = moco.backbone.layer2[0].downsample[1]  # torchvision's name holds no "bn"
    assert decay[id(downsample_bn.weight)] == 0.0


def test_projection_head_is_initialised_as_the_authors_neck():
    torch.manual_seed(0)
    head = mlp_head(2048, 2048, 128)
    for layer, fan_in in ((head[0], 2048), (head[2], 2048)):
        assert torch.count_nonzero(layer.bias) == 0
        # kaiming normal, fan_in, relu gain: std = sqrt(2 / fan_in)
        assert layer.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.02)
        assert abs(layer.weight.mean().item()) < 1e-3
    default = nn.Linear(2048, 2048)  # PyTorch's default (kaiming uniform, a=sqrt(5)) is ~2.4x narrower
    assert default.weight.std().item() < 0.5 * head[0].weight.std().item()


@pytest.mark.parametrize("batch, world, want", [(64, 1, 2), (256, 1, 4), (256, 4, 4), (64, 4, 1), (48, 1, 2),
                                                (96, 1, 2), (33, 1, 1), (512, 2, 8)])
def test_auto_bn_groups_follow_the_authors_64_images_per_device(batch, world, want):
    cfg = load_config(None, [f"data.batch_size={batch}", f"model.queue_size={batch * world}"])
    assert bn_groups(cfg, world) == want


def test_explicit_bn_groups_must_divide_the_batch_and_sync_or_none_mean_one_group():
    assert bn_groups(load_config(None, ["model.bn_groups=4"]), 1) == 4
    with pytest.raises(UserError, match="model.bn_groups"):
        load_config(None, ["data.batch_size=64", "model.bn_groups=3"])
    assert bn_groups(load_config(None, ["model.shuffle_bn=none"]), 1) == 1
    assert bn_groups(load_config(None, ["model.shuffle_bn=sync"]), 1) == 1


def test_stratified_subset_keeps_each_class_share_and_is_seeded():
    from fasthpt.data.common import stratified_subset

    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 3)
    sub = stratified_subset(labels, 0.3)
    assert torch.bincount(labels[sub]).tolist() == [6, 3, 1]  # round(n_c * 0.3), at least one
    assert torch.equal(sub, stratified_subset(labels, 0.3)) and not torch.equal(sub, stratified_subset(labels, 0.3, 1))
    assert torch.equal(sub, sub.sort().values)


@pytest.mark.parametrize("backend", ["torch", "ffcv", "dali"])
def test_train_fraction_pretrains_on_the_same_stratified_subset(tiny_run, backend):
    from fasthpt.trainer_setup import build_loader

    cfg = tiny_run("frac", f"data.backend={backend}", "data.train_fraction=0.5", "data.batch_size=4")
    loader = build_loader(cfg, "cpu")
    assert loader.num_samples == 16  # round(9 * 0.5) = 4 of each of the 4 classes' 9 train images
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert sum(batch[0].shape[0] for batch in loader) == 16
    with pytest.raises(UserError, match="data.train_fraction"):
        tiny_run("frac-tv", "data.train_fraction=0.5", "data.ssl_splits=train+val")


@pytest.mark.parametrize("world, per_process_batch, groups", [(1, 256, 4), (2, 128, 2), (4, 64, 1), (8, 32, 1)])
def test_a_global_batch_is_shared_out_over_the_processes(world, per_process_batch, groups):
    """data.global_batch=256 (the paper's): every process count trains 256 images per step, normalised
    in BN groups of 64 (the authors' 64 per GPU) down to one group per process."""
    from fasthpt.config import batch_summary, per_process

    cfg = load_config(None, ["data.global_batch=256"])
    run = per_process(cfg, world)
    assert run.data.batch_size == per_process_batch and bn_groups(run, world) == groups
    assert run.data.batch_size * world == 256 and cfg.data.batch_size == 64  # the loaded config is not changed
    assert batch_summary(run, world).startswith(f"data.global_batch 256 on {world} process(es): data.batch_size "
                                                f"{per_process_batch} per process, {groups} BN group(s)")


def test_a_global_batch_the_processes_do_not_divide_or_a_second_batch_is_refused():
    from fasthpt.config import per_process

    with pytest.raises(UserError, match="'data.global_batch' is 256; valid: a multiple of the 3 processes"):
        per_process(load_config(None, ["data.global_batch=256"]), 3)
    with pytest.raises(UserError, match=r"'data.global_batch' \(256\) and 'data.batch_size' \(32\) are both set"):
        per_process(load_config(None, ["data.global_batch=256", "data.batch_size=32"]), 1)
    plain = load_config(None, ["data.batch_size=32"])  # no global batch: data.batch_size per process, as before
    assert per_process(plain, 4) is plain
    with pytest.raises(UserError, match="model.queue_size.*global batch 256 \\(data.global_batch 256\\)"):
        load_config(None, ["data.global_batch=256", "model.queue_size=128"])
    with pytest.raises(UserError, match="model.bn_groups"):  # checked against the batch on one process
        load_config(None, ["data.global_batch=256", "model.bn_groups=3"])


def test_pretrain_refuses_before_launching_processes_that_do_not_divide_the_global_batch(tmp_path, capsys):
    from fasthpt.cli import main

    config = tmp_path / "g.yaml"
    config.write_text("data: {global_batch: 256}\n")
    code = main(["pretrain", str(config), f"run_dir={tmp_path / 'runs'}", "--nproc", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "data.global_batch' is 256; valid: a multiple of the 3 processes" in err
    assert not (tmp_path / "runs").exists()
