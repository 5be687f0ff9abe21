"""The embedded `natural` source domain: random multi-scale crops of the photographs that
scikit-image ships inside its wheel (skimage/data/*), standing in for ImageNet offline.

Only photographs of real scenes are used (no synthetic test patterns such as colorwheel, logo,
checkerboard, page or text). Images that need the optional `pooch` download (eagle, lily, ...) are
left out so the set is the same on every machine with the package installed. Grayscale photographs
are replicated to three channels.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image

# name -> loader returning one HxW or HxWx3 uint8 array; stereo_motorcycle gives two real views.
PHOTOS: dict[str, Callable[[object], np.ndarray]] = {
    "astronaut": lambda d: d.astronaut(),
    "coffee": lambda d: d.coffee(),
    "chelsea": lambda d: d.chelsea(),
    "rocket": lambda d: d.rocket(),
    "hubble_deep_field": lambda d: d.hubble_deep_field(),
    "immunohistochemistry": lambda d: d.immunohistochemistry(),
    "retina": lambda d: d.retina(),
    "motorcycle_left": lambda d: d.stereo_motorcycle()[0],
    "motorcycle_right": lambda d: d.stereo_motorcycle()[1],
    "camera": lambda d: d.camera(),
    "coins": lambda d: d.coins(),
    "brick": lambda d: d.brick(),
    "grass": lambda d: d.grass(),
    "gravel": lambda d: d.gravel(),
    "moon": lambda d: d.moon(),
    "clock": lambda d: d.clock(),
}

MIN_SCALE = 0.08  # smallest crop side as a fraction of the photo's short side (cf. RandomResizedCrop)


@lru_cache(maxsize=None)
def available() -> tuple[str, ...]:
    """Names of the photographs that load offline here (checked once per process)."""
    return tuple(n for n in PHOTOS if _try_load(n) is not None)


def _try_load(name: str) -> np.ndarray | None:
    try:
        return load(name)
    except Exception:  # a photo missing from this skimage build: leave it out, listed by available()
        return None


@lru_cache(maxsize=None)
def load(name: str) -> np.ndarray:
    """The photograph as HxWx3 uint8 RGB, cached per process (workers load lazily)."""
    import skimage.data

    img = np.asarray(PHOTOS[name](skimage.data))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3], dtype=np.uint8)
    img.flags.writeable = False
    return img


def crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> np.ndarray:
    """A square crop at a log-uniform random scale and position, flipped with p=0.5, resized to
    size x size with PIL's antialiased bicubic filter."""
    h, w = photo.shape[:2]
    short = min(h, w)
    side = int(round(short * np.exp(rng.uniform(np.log(MIN_SCALE), 0.0))))
    side = max(side, min(short, 8))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    patch = Image.fromarray(photo[top:top + side, left:left + side])
    out = np.asarray(patch.resize((size, size), Image.BICUBIC, reducing_gap=2.0))
    return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out
