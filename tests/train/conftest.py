"""Data for the training tests: the shared ``tiny_data`` fixture when tests/conftest.py provides
it, else a small WebDataset folder written here in the `fasthpt prep` layout (manifest.json)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image


def write_wds_dataset(root, classes=4, train_per_class=16, val_per_class=4, test_per_class=4, size=48,
                      seed=0):
    """Class c: a noisy image whose mean colour and stripe frequency depend on c. The splits are
    drawn in the order train, val, test, so test_per_class does not change the train and val images."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wds").mkdir(exist_ok=True)
    files, splits, sums = {}, {}, []
    for split, per in (("train", train_per_class), ("val", val_per_class), ("test", test_per_class)):
        if per == 0:  # as `fasthpt prep` does: a split without images is absent
            continue
        name = f"wds/{split}-000000.tar"
        with tarfile.open(root / name, "w") as tar:
            for i in range(classes * per):
                c = i % classes
                yy = np.arange(size)[:, None] * np.ones((1, size))
                base = np.stack([np.sin(yy * (c + 1) / 4.0)] * 3, -1) * 60
                colour = np.array([60 + 50 * c, 200 - 40 * c, 120 + 20 * (c % 2)])
                img = np.clip(colour + base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                if split == "train":
                    sums.append(img.reshape(-1, 3).astype(np.float64))
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                for ext, data in (("jpg", buf.getvalue()), ("cls", str(c).encode())):
                    info = tarfile.TarInfo(f"{split}{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        files[split] = [name]
        splits[split] = {"count": classes * per, "per_class": [per] * classes}
    pix = np.concatenate(sums)
    manifest = {"schema": 3, "name": "tiny", "classes": [f"c{c}" for c in range(classes)], "splits": splits,
                "mean": pix.mean(0).tolist(), "std": pix.std(0).tolist(), "formats": ["wds"],
                "files": {"wds": files}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="session")
def ssl_data(request, tmp_path_factory):
    try:
        return request.getfixturevalue("tiny_data")
    except pytest.FixtureLookupError:
        return write_wds_dataset(tmp_path_factory.mktemp("ssl_data") / "tiny")


# A run small enough for a CPU test: 32 px, batches of 8, resnet_tiny, a 64-key queue.
TINY_RUN = ["data.backend=torch", "data.res=32", "data.batch_size=8", "data.workers=0", "model.arch=resnet_tiny",
            "model.queue_size=64", "model.dim=16", "model.mlp_hidden=32", "train.progress_bar=false",
            "train.log_interval=1ba"]


@pytest.fixture
def tiny_run(tmp_path, ssl_data):
    """``make(name, *overrides, run_dir=tmp_path)``: the RunConfig of a tiny run on ``ssl_data``."""
    from fasthpt.config import load_config

    def make(name, *extra, run_dir=None):
        return load_config(None, [f"run_dir={run_dir or tmp_path}", f"name={name}", f"data.path={ssl_data}",
                                  *TINY_RUN, *extra])

    return make


@pytest.fixture
def tiny_yaml(tmp_path, tiny_run):
    """``make(name, *overrides)``: that config saved as tmp_path/<name>.yaml (for the CLI)."""
    from fasthpt.config import save_config

    def make(name, *extra):
        path = tmp_path / f"{name}.yaml"
        save_config(tiny_run(name, *extra), path)
        return path

    return make
