"""Small deterministic folder-per-class image trees: the test suite's own data (tests/conftest.py).

Each class has its own colour and pattern (checks, rings, stripes, dots), varied per image in
phase, brightness and noise, so that a classifier can tell the classes apart; JPEG and PNG files
alternate, as in a real scraped dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_CLASSES = ("blue_checks", "green_rings", "red_stripes", "yellow_dots")
TINY_PER_CLASS = 15  # 9 train / 3 val / 3 test at the default 0.2 / 0.2 split
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
    """root/<class>/NNN.{jpg,png}: `per_class` images of each of TINY_CLASSES; returns root."""
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
