import numpy as np
import pytest
import torch
import torchvision

from fasthpt.errors import UserError
from fasthpt.models.backbones import ARCHS, build_backbone, load_backbone, save_backbone
from fasthpt.models.moco import ComposerMoCo, MoCo


def _same(a: dict, b: dict, keys=None):
    keys = keys or a.keys()
    for k in keys:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("arch", list(ARCHS))
def test_backbones_pool_to_num_features_with_torchvision_names(arch):
    model = build_backbone(arch).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, model.num_features)
    keys = model.state_dict().keys()
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.0.bn2.running_mean"} <= set(keys)
    assert not any(k.startswith("fc.") for k in keys)


def test_resnet_tiny_moco_step_trains_on_cpu():
    """A MoCo step on resnet_tiny at batch 64, 64 px runs on the CPU and moves the query encoder
    but not the key encoder's gradients. Its speed is a benchmark (`fasthpt bench train`,
    bench/RESULTS.md), not a test: machines of this kind differ up to 3.5x."""
    torch.manual_seed(0)
    moco = MoCo(build_backbone("resnet_tiny"), dim=128, queue_size=4096)
    opt = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.03, momentum=0.9)
    x, y = torch.randn(64, 3, 64, 64), torch.randn(64, 3, 64, 64)
    model = ComposerMoCo(moco)
    before = moco.backbone.conv1.weight.detach().clone()
    loss = model.loss(model((x, y)), None)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and loss.item() > 0
    assert not torch.equal(before, moco.backbone.conv1.weight)
    assert all(p.grad is None for p in moco.encoder_k.parameters())


def _tv_resnet18_file(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    return tv.state_dict(), path


def test_torchvision_state_dict_loads_identically_and_infers_arch(tmp_path):
    ref, path = _tv_resnet18_file(tmp_path)
    model, report = load_backbone(str(path))
    assert report.arch == "resnet18" and report.missing == [] and report.unexpected == []
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    _same(ref, model.state_dict(), [k for k in ref if not k.startswith("fc.")])


def test_moco_release_format_takes_query_encoder_and_drops_mlp(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    q = {f"module.encoder_q.{k}": v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    k = {f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    mlp = {"module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.encoder_q.fc.2.weight": torch.randn(128, 512)}
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    state = {**q, **k, **mlp, "module.queue": torch.randn(128, 8)}
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": state}, path)
    model, report = load_backbone(str(path), "resnet18")
    assert report.format == "moco" and report.missing == []
    assert set(report.dropped) == {"fc.0.weight", "fc.2.weight"}
    _same({kk[len("module.encoder_q."):]: v for kk, v in q.items()}, model.state_dict())


def test_timm_layout_with_other_classifier_loads(tmp_path):
    tv = build_backbone("resnet_tiny")
    state = {**tv.state_dict(), "fc.weight": torch.randn(10, 256), "fc.bias": torch.randn(10)}
    torch.save(state, tmp_path / "timm.pth")
    model, report = load_backbone(str(tmp_path / "timm.pth"))
    assert report.arch == "resnet_tiny"
    _same(tv.state_dict(), model.state_dict())


def test_own_backbone_pt_round_trip_and_torchvision_reads_it(tmp_path):
    src = torchvision.models.resnet18(weights=None)
    src.fc = torch.nn.Identity()
    save_backbone(src, tmp_path / "backbone.pt")
    saved = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert not any(k.startswith("fc.") for k in saved)
    fresh = torchvision.models.resnet18(weights=None)
    missing, unexpected = fresh.load_state_dict(saved, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    model, _ = load_backbone(str(tmp_path / "backbone.pt"), "resnet18")
    _same(saved, model.state_dict())


def test_composer_checkpoint_gives_query_backbone(tmp_path):
    moco = MoCo(build_backbone("resnet_tiny"), dim=16, queue_size=32)
    with torch.no_grad():
        for p in moco.encoder_k.parameters():
            p.add_(1.0)  # key encoder differs: must not be the one loaded
    state = {f"moco.{k}": v for k, v in moco.state_dict().items()}
    rng = [{"numpy": np.random.get_state()}]  # as Composer saves it: an ndarray, read under its allow-list
    torch.save({"state": {"model": state, "timestamp": {}}, "rng": rng}, tmp_path / "ep0-ba5-rank0.pt")
    model, report = load_backbone(str(tmp_path / "ep0-ba5-rank0.pt"))
    assert report.format == "composer" and report.arch == "resnet_tiny"
    _same(moco.backbone.state_dict(), model.state_dict())


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    state = build_backbone("resnet_tiny").state_dict()
    state.pop("layer4.0.bn2.weight")
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "partial.pth")
    _, report = load_backbone(str(tmp_path / "partial.pth"), "resnet_tiny")
    assert report.missing == ["layer4.0.bn2.weight"] and report.unexpected == ["extra.weight"]


def test_wrong_architecture_and_missing_file_are_user_errors(tmp_path):
    _, path = _tv_resnet18_file(tmp_path)
    with pytest.raises(UserError, match="holds a resnet18 but model.arch is resnet50"):
        load_backbone(str(path), "resnet50")
    with pytest.raises(UserError, match="not found"):
        load_backbone(str(tmp_path / "nope.pth"), "resnet18")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        load_backbone(str(tmp_path / "junk.pth"), "resnet18")


def test_torchvision_name_reads_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="does not download"):
        load_backbone("torchvision:resnet18")
    ref, _ = _tv_resnet18_file(tmp_path)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ref, tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    model, report = load_backbone("torchvision:resnet18")
    assert report.arch == "resnet18"
    _same(ref, model.state_dict(), [k for k in ref if not k.startswith("fc.")])


def test_random_base_needs_arch():
    model, report = load_backbone("none", "resnet_tiny")
    assert report.format == "random" and model.num_features == 256
    with pytest.raises(UserError):
        load_backbone("none")


def test_torchvision_resnet50_is_pinned_to_the_papers_v1_and_v2_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = torchvision.models.resnet50(weights=None).state_dict()
    v2 = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url.rsplit("/", 1)[1]
    torch.save(state, cache / v2)
    with pytest.raises(UserError, match="IMAGENET1K_V1"):  # V2 alone in the cache: not the paper's base
        load_backbone("torchvision:resnet50")
    _, report = load_backbone("torchvision:resnet50:IMAGENET1K_V2")
    assert report.format == "torchvision resnet50 IMAGENET1K_V2 (not the paper's IMAGENET1K_V1)"
    _, report = load_backbone(str(cache / v2))  # the file itself: named by its release too
    assert "IMAGENET1K_V2 (not the paper's" in report.summary()
    v1 = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    torch.save(state, cache / v1)
    _, report = load_backbone("torchvision:resnet50")
    assert report.format == "torchvision resnet50 IMAGENET1K_V1"
    with pytest.raises(UserError, match="no weights 'V3'"):
        load_backbone("torchvision:resnet50:V3")
