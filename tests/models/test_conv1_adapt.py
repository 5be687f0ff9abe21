"""HPT from an RGB base into N bands: conv1 adapted by a named, recorded strategy; the rest exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from fasthpt.config import CONV1_STRATEGIES as CONFIG_STRATEGIES
from fasthpt.config import load_config
from fasthpt.errors import UserError
from fasthpt.hpt import apply_mode
from fasthpt.models.backbones import CONV1_STRATEGIES, build_backbone, load_backbone, rgb_bands
from fasthpt.models.moco import MoCo

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def rgb_base(tmp_path_factory):
    """A torchvision resnet18 state dict (classifier included, as torchvision writes it)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("base") / "resnet18_rgb.pt"
    torch.save(state, path)
    return path, state


def _rest_loaded_exactly(model, state):
    own = model.state_dict()
    rest = [k for k in state if not k.startswith("fc.") and k != "conv1.weight"]
    assert rest and all(torch.equal(own[k], state[k]) for k in rest)


def test_rgb_base_into_13_sentinel2_bands_by_the_rgb_rule(rgb_base):
    path, state = rgb_base
    model, report = load_backbone(str(path), "resnet18", in_chans=13, band_names=S2)
    w, rgb = model.conv1.weight.detach(), state["conv1.weight"]
    assert w.shape == (64, 13, 7, 7)
    assert report.conv1 == "rgb" and report.in_chans == 13
    assert "R=B04, G=B03, B=B02" in report.conv1_how and "conv1 rgb" in report.summary()
    for channel, band in enumerate(("B04", "B03", "B02")):
        torch.testing.assert_close(w[:, S2.index(band)], rgb[:, channel] * 3 / 13)
    for band in ("B01", "B08", "B8A", "B12"):
        torch.testing.assert_close(w[:, S2.index(band)], rgb.mean(1) * 3 / 13)
    torch.testing.assert_close(w.sum(1), rgb.sum(1))  # a uniform input gives the base's response
    _rest_loaded_exactly(model, state)
    assert report.missing == [] and report.unexpected == [] and report.loaded == len(model.state_dict())
    assert model(torch.randn(2, 13, 64, 64)).shape == (2, 512)


def test_one_band_takes_the_sum_of_the_rgb_filters(rgb_base):
    path, state = rgb_base
    model, report = load_backbone(str(path), "resnet18", in_chans=1, band_names=["xray"])
    assert model.conv1.weight.shape == (64, 1, 7, 7) and report.conv1 == "mean"
    torch.testing.assert_close(model.conv1.weight.detach()[:, 0], state["conv1.weight"].sum(1))  # timm's rule
    _rest_loaded_exactly(model, state)


def test_unnamed_bands_take_the_mean_and_rgb_needs_names(rgb_base):
    path, state = rgb_base
    model, report = load_backbone(str(path), "resnet18", in_chans=4, band_names=None, conv1="auto")
    assert report.conv1 == "mean" and "x3/4" in report.conv1_how
    for band in range(4):
        torch.testing.assert_close(model.conv1.weight.detach()[:, band], state["conv1.weight"].mean(1) * 3 / 4)
    with pytest.raises(UserError, match="hpt.conv1=rgb needs .*bands named red, green and blue.*hpt.conv1=mean"):
        load_backbone(str(path), "resnet18", in_chans=4, band_names=["a", "b", "c", "d"], conv1="rgb")
    _, forced = load_backbone(str(path), "resnet18", in_chans=13, band_names=S2, conv1="mean")
    assert forced.conv1 == "mean"


def test_a_base_with_the_datas_bands_loads_as_is(tmp_path):
    own = build_backbone("resnet_tiny", in_chans=13)
    torch.save(own.state_dict(), tmp_path / "b13.pt")
    model, report = load_backbone(str(tmp_path / "b13.pt"), in_chans=13, band_names=S2)
    assert report.arch == "resnet_tiny" and report.conv1 == "as is" and report.conv1_how == ""
    assert all(torch.equal(v, own.state_dict()[k]) for k, v in model.state_dict().items())
    # and a 13-band base into RGB data: the mean rule, scaled by 13/3
    rgb, back = load_backbone(str(tmp_path / "b13.pt"), in_chans=3)
    assert back.conv1 == "mean"
    torch.testing.assert_close(rgb.conv1.weight.detach().sum(1), own.conv1.weight.detach().sum(1))


@pytest.mark.parametrize("names, want", [
    (S2, (3, 2, 1)),
    (["Red", "Green", "Blue", "NIR"], (0, 1, 2)),
    (["red edge 1", "nir", "blue", "green", "red"], (4, 3, 2)),  # 'red edge' is not red
    (["B4", "B3", "B2"], None),  # Landsat 5/7 and 8 number their bands differently: not guessed
    (["red", "red", "green", "blue"], None),  # two reds: ambiguous
    (None, None),
])
def test_red_green_blue_are_found_by_name_only_when_unambiguous(names, want):
    assert rgb_bands(names) == want


def _bn_step(bands: int):
    torch.manual_seed(0)
    moco = MoCo(build_backbone("resnet_tiny", in_chans=bands), dim=16, mlp_hidden=32, queue_size=64)
    counts = apply_mode(moco, "bn")
    trainable = {n for n, p in moco.encoder_q.named_parameters() if p.requires_grad}
    return counts, trainable


def test_hpt_bn_keeps_an_n_band_conv1_trainable_and_says_so(caplog):
    with caplog.at_level("INFO", logger="fasthpt.hpt"):
        counts, trainable = _bn_step(13)
    assert counts["conv1_trainable"] == 1 and "backbone.conv1.weight" in trainable
    assert "conv1 (13 input bands" in caplog.text
    convs = {n for n in trainable if n.startswith("backbone.") and n.endswith("weight") and "bn" not in n
             and "downsample.1" not in n}
    assert convs == {"backbone.conv1.weight"}  # every other conv stays frozen
    counts3, trainable3 = _bn_step(3)
    assert counts3["conv1_trainable"] == 0 and "backbone.conv1.weight" not in trainable3
    assert trainable - trainable3 == {"backbone.conv1.weight"}


def test_config_key_is_strict():
    assert CONV1_STRATEGIES == CONFIG_STRATEGIES
    assert load_config(None, ["hpt.conv1=rgb"]).hpt.conv1 == "rgb"
    with pytest.raises(UserError, match="'hpt.conv1' is 'rgbn'; valid: auto, rgb, mean"):
        load_config(None, ["hpt.conv1=rgbn"])


def test_pretraining_builds_the_backbone_for_the_datas_bands(tmp_path, rgb_base):
    """build_model reads the manifest's bands and band names: a 13-band TIFF dataset and an RGB
    base give a 13-channel conv1 by the rgb rule."""
    import tifffile

    from dataprep import prepare
    from fasthpt.trainer_setup import build_model

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for k in range(3):
            tifffile.imwrite(tmp_path / "src" / c / f"{k}.tif", rng.integers(0, 4096, (13, 16, 16), dtype=np.uint16),
                             photometric="minisblack", planarconfig="separate")
    data = prepare("b13", out=tmp_path / "data", src=tmp_path / "src", formats="wds", workers=1, progress=False,
                   val_frac=0.34, test_frac=0, band_names=",".join(S2))
    cfg = load_config(None, [f"data.path={data}", "model.arch=resnet18", f"hpt.base={rgb_base[0]}",
                             "model.queue_size=64", "data.batch_size=4", "model.dim=16"])
    moco, report = build_model(cfg, "cpu")
    assert moco.backbone.conv1.weight.shape[1] == 13 and report.conv1 == "rgb" and report.in_chans == 13
