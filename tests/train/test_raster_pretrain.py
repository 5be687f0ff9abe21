"""A 13-band uint16 GeoTIFF-style folder end to end: prep, a few batches of HPT from a torchvision
RGB resnet18 state dict (conv1 adapted by the recorded rule), the kNN evaluation, on each loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

tifffile = pytest.importorskip("tifffile")

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def s2_folder(tmp_path_factory):
    """2 classes x 8 TIFFs, 13 bands stored bands-first (as GeoTIFFs usually are), 12-bit values."""
    root = tmp_path_factory.mktemp("s2_tiffs")
    rng = np.random.default_rng(1)
    for label, name in enumerate(("water", "forest")):
        (root / name).mkdir()
        spectrum = np.linspace(300, 900, 13) if label else np.linspace(900, 100, 13)
        for i in range(8):
            img = spectrum[:, None, None] + rng.normal(0, 60, (13, 24, 24)) + 40 * label * np.sin(np.arange(24) / 2)
            tifffile.imwrite(root / name / f"{i}.tif", np.clip(img, 0, 4095).astype(np.uint16), planarconfig="separate",
                             photometric="minisblack")
    return root


@pytest.fixture(scope="module")
def rgb_base(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.mark.parametrize("backend", ["ffcv", "dali", "torch"])
def test_13_band_tiffs_prep_pretrain_from_rgb_resnet18_and_knn(tmp_path, s2_folder, rgb_base, backend):
    from dataprep import prepare
    from fasthpt.config import load_config
    from fasthpt.data import available_backends
    from fasthpt.eval.knn import run_knn
    from fasthpt.manifest import load_manifest
    from fasthpt.train import pretrain

    if available_backends()[backend]:
        pytest.skip(available_backends()[backend])
    data = prepare("s2", out=tmp_path, src=s2_folder, val_frac=0.25, test_frac=0.25, workers=1, progress=False,
                   band_names=",".join(BANDS))
    manifest = load_manifest(data)
    assert manifest.bands == 13 and len(manifest.mean) == len(manifest.std) == 13 and manifest.dtype == "uint16"
    cfg = load_config(None, [f"run_dir={tmp_path}", "name=hpt", f"data.path={data}", f"data.backend={backend}",
                             f"hpt.base={rgb_base}", "model.arch=resnet18", "data.res=24", "data.batch_size=4",
                             "data.workers=1", "model.queue_size=16", "model.dim=16", "train.max_duration=2ba",
                             "train.progress_bar=false", "train.knn_interval=0ba"])
    result = pretrain(cfg)
    assert result["iterations"] == 2 and "conv1 rgb" in result["base"] and "R=B04" in result["base"]
    state = torch.load(result["backbone"], weights_only=True)
    assert state["conv1.weight"].shape == (64, 13, 7, 7)
    assert json.loads((tmp_path / "hpt" / "base.json").read_text())["conv1"] == "rgb"
    knn = run_knn(result["backbone"], data, res=24, batch_size=8, workers=1, backend=backend, quiet=True)
    assert 0.0 <= knn["top1"] <= 1.0 and np.isfinite(knn["top1"])
