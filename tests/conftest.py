"""Shared fixtures for the whole test suite.

- ``tiny_folder``: a folder-per-class image tree (4 classes x 12 images, 48x48 RGB, JPEG and PNG
  mixed), deterministic, each class with its own colour and pattern so a classifier can tell them
  apart.
- ``tiny_data``: that tree prepared by ``dataprep.prepare`` (both formats, 36 train / 12 val),
  the folder a loader or a trainer reads with ``load_manifest``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# tests/dataprep/ mirrors the package dataprep/: with tests/ on sys.path (pytest puts a rootdir
# conftest's folder there) `import dataprep` could resolve to that test folder as a namespace
# package. Put the repository root first so the real package always wins.
_ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

import numpy as np
import pytest
from PIL import Image

TINY_CLASSES = ("blue_checks", "green_rings", "red_stripes", "yellow_dots")
TINY_PER_CLASS = 12
TINY_SIZE = 48


def tiny_image(label: int, index: int, size: int = TINY_SIZE) -> np.ndarray:
    """Image `index` of class `label`: a class colour and pattern, varied in phase and brightness."""
    rng = np.random.default_rng(1000 * label + index)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 8)
    if label == 0:  # checkerboard
        pattern = ((x + phase) // 6 + (y // 6)) % 2
    elif label == 1:  # concentric rings
        pattern = (np.hypot(x - size / 2, y - size / 2) + phase) // 5 % 2
    elif label == 2:  # diagonal stripes
        pattern = (x + y + phase) // 5 % 2
    else:  # dots on a grid
        pattern = (np.hypot((x + phase) % 10 - 5, (y + phase) % 10 - 5) < 3).astype(np.float32)
    colour = np.array([[40, 80, 220], [40, 190, 70], [220, 50, 40], [230, 210, 40]][label], np.float32)
    bright = rng.uniform(0.7, 1.0)
    img = pattern[..., None] * colour * bright + (1 - pattern[..., None]) * 25
    img += rng.normal(0, 2, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tiny_folder(root: Path, per_class: int = TINY_PER_CLASS, size: int = TINY_SIZE) -> Path:
    for label, name in enumerate(TINY_CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.fromarray(tiny_image(label, i, size))
            if i % 2:
                img.save(folder / f"{i:03d}.png")
            else:
                img.save(folder / f"{i:03d}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("tiny_src"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_folder) -> Path:
    from dataprep import prepare

    out = tmp_path_factory.mktemp("tiny_data")
    return prepare("tiny", out=out, src=tiny_folder, val_frac=0.25, max_res=64, workers=1,
                   progress=False)
