import pytest
import torch

from fasthpt.algorithms import ALGORITHMS, build_algorithms, resize_views, scale_at
from fasthpt.errors import UserError
from fasthpt.models.backbones import build_backbone, load_backbone, save_backbone


def test_schedule_follows_composer_progressive_resizing():
    assert scale_at(0.0, 0.5, 0.5, 0.2) == 0.5 and scale_at(0.49, 0.5, 0.5, 0.2) == 0.5
    assert scale_at(0.65, 0.5, 0.5, 0.2) == pytest.approx(0.75)
    assert scale_at(0.8, 0.5, 0.5, 0.2) == 1.0 and scale_at(1.0, 0.5, 0.5, 0.2) == 1.0


def test_both_views_resized_to_the_same_size():
    q, k = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    rq, rk = resize_views((q, k), 0.5)
    assert rq.shape == rk.shape == (4, 3, 32, 32)
    # interpolation, not a crop: a constant image stays constant, a view is not swapped for the other
    assert not torch.allclose(rq, rk)
    const = torch.full((2, 3, 64, 64), 3.0)
    assert torch.allclose(resize_views((const, const), 0.5)[0], torch.full((2, 3, 32, 32), 3.0))
    same = resize_views((q, k), 1.0)
    assert same[0] is q and same[1] is k


def test_two_view_algorithm_on_a_composer_state():
    from types import SimpleNamespace

    from composer.core import Event

    algo = build_algorithms(["progressive_resizing"])[0]
    state = SimpleNamespace(batch=(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)),
                            get_elapsed_duration=lambda: 0.1)
    assert algo.match(Event.AFTER_DATALOADER, state) and not algo.match(Event.BATCH_END, state)
    algo.apply(Event.AFTER_DATALOADER, state, None)
    assert state.batch[0].shape[-1] == state.batch[1].shape[-1] == 16


def test_unknown_algorithm_is_user_error():
    assert set(ALGORITHMS) >= {"channels_last", "blurpool", "progressive_resizing", "layer_freezing"}
    with pytest.raises(UserError, match="valid: channels_last"):
        build_algorithms(["turbo"])


def test_blurpool_model_exports_torchvision_keys(tmp_path):
    from composer.algorithms.blurpool import apply_blurpool

    model = build_backbone("resnet_tiny")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    apply_blurpool(model, min_channels=1)
    assert any(type(m).__name__ == "BlurConv2d" for m in model.modules())
    save_backbone(model, tmp_path / "b.pt")
    loaded, report = load_backbone(str(tmp_path / "b.pt"), "resnet_tiny")
    assert report.missing == [] and report.unexpected == []
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_blurpool_surgery_on_both_encoders_keeps_momentum_pairs_aligned():
    from fasthpt.algorithms import build_algorithms, prepare_model
    from fasthpt.models.moco import MoCo

    moco = MoCo(build_backbone("resnet_tiny"), dim=8, mlp_hidden=16, queue_size=16)
    prepare_model(moco, ["blurpool"])
    assert build_algorithms(["blurpool"]) == []  # surgery only, nothing for the Trainer
    for encoder in (moco.encoder_q, moco.encoder_k):
        assert any(type(m).__name__ == "BlurConv2d" for m in encoder.modules())
    shapes = [(p.shape, q.shape) for p, q in zip(moco.encoder_k.parameters(), moco.encoder_q.parameters())]
    assert all(a == b for a, b in shapes)
    q, k, _ = moco(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert q.shape == k.shape == (2, 8)


def test_layer_freezing_spares_the_query_head():
    from types import SimpleNamespace

    from composer.core import Event

    from fasthpt.models.moco import MoCo

    moco = MoCo(build_backbone("resnet_tiny"), dim=8, mlp_hidden=16, queue_size=16)
    opt = torch.optim.SGD([p for p in moco.encoder_q.parameters()], lr=0.1, momentum=0.9)
    (algo,) = build_algorithms(["layer_freezing"], moco)
    state = SimpleNamespace(optimizers=(opt,), get_elapsed_duration=lambda: 1.0)
    logger = SimpleNamespace(log_metrics=lambda m: None)
    moco.train()
    q, k, negatives = moco(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    from fasthpt.losses import infonce

    infonce(q, k, negatives, 0.2).backward()
    opt.step()  # momentum state for every parameter
    algo.apply(Event.EPOCH_END, state, logger)  # the end of training: maximum freezing
    opt.state_dict()  # a checkpoint can still be written
    assert not moco.backbone.conv1.weight.requires_grad
    assert moco.encoder_q.head[2].weight.requires_grad
    q, k, negatives = moco(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    infonce(q, k, negatives, 0.2).backward()  # still has a gradient path
