"""Embedded datasets that need no download: `sat` (procedural aerial scenes, the HPT target
domain) and `natural` (crops of scikit-image's photographs, the source domain standing in for
ImageNet).

    gen = get_generator("sat", num_images=2400, image_size=64, seed=0)
    img, label = gen.render(i)        # HxWx3 uint8 RGB, int in [0, len(gen.classes))

Each image depends only on (name, seed, index, image_size, difficulty): any index can be rendered
alone, in any process, in any order (dataprep renders indices in parallel workers). Labels are
balanced: label = i % num_classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataprep import synth_photos
from dataprep.synth_scenes import SCENES
from dataprep.synth_sensor import apply_sensor
from fasthpt.errors import UserError

EMBEDDED = ("sat", "natural")

# Small enough to pretrain on 2 CPU cores in minutes (the demo trains at 64 px); scale up with
# --num-images / --image-size.
DEFAULTS = {
    "sat": {"num_images": 4000, "image_size": 64},  # ~308 per class: 800 val images keep kNN/linear noise ~1.7 points
    "natural": {"num_images": 3000, "image_size": 64},
}

MIN_IMAGE_SIZE = 16  # below this the scene structure (roofs, lanes, stripes) is sub-pixel


@dataclass(frozen=True)
class _Base:
    num_images: int
    image_size: int
    seed: int = 0
    difficulty: float = 1.0

    def __len__(self) -> int:
        return self.num_images

    def _rng(self, i: int, salt: int) -> np.random.Generator:
        if not 0 <= i < self.num_images:
            raise IndexError(f"index {i} out of range for {self.num_images} images")
        # SeedSequence mixes the whole key, so (seed, i) streams are independent of each other.
        return np.random.default_rng([salt, int(self.seed), int(i)])

    @property
    def settings(self) -> dict:
        """Everything the output depends on: for fingerprints and the manifest."""
        return {"generator": self.name, "version": self.version, "num_images": self.num_images,
                "image_size": self.image_size, "seed": self.seed, "difficulty": self.difficulty}


class SatGenerator(_Base):
    """Procedural aerial land-use scenes, one class per renderer in synth_scenes.SCENES."""

    name = "sat"
    version = "sat-5"
    classes = list(SCENES)

    def render(self, i: int) -> tuple[np.ndarray, int]:
        rng = self._rng(i, salt=0x5A7)
        label = i % len(self.classes)
        scene = SCENES[self.classes[label]](rng, self.image_size)
        return apply_sensor(rng, scene, self.difficulty), label


class NaturalGenerator(_Base):
    """Random crops of real photographs; the label is the photograph's index."""

    name = "natural"
    version = "natural-1"

    @property
    def classes(self) -> list[str]:
        return list(synth_photos.available())

    @property
    def settings(self) -> dict:
        """Adds the photo set: it follows the installed scikit-image, not only this code."""
        import skimage

        return {**super().settings, "photos": self.classes, "skimage": skimage.__version__}

    def render(self, i: int) -> tuple[np.ndarray, int]:
        rng = self._rng(i, salt=0x9A7)
        names = synth_photos.available()
        label = i % len(names)
        return synth_photos.crop(rng, synth_photos.load(names[label]), self.image_size), label


_GENERATORS = {"sat": SatGenerator, "natural": NaturalGenerator}


def get_generator(name: str, num_images: int | None = None, image_size: int | None = None,
                  seed: int = 0, difficulty: float = 1.0):
    """The embedded dataset `name` ("sat" or "natural"); None picks the DEFAULTS.

    `difficulty` scales the sensor nuisances of `sat` (0 clean, 1 default, up to 3); `natural`
    photographs ignore it."""
    if name not in _GENERATORS:
        raise UserError(f"unknown embedded dataset {name!r}: choose one of {', '.join(EMBEDDED)}, "
                        "or give --src DIR")
    num_images = DEFAULTS[name]["num_images"] if num_images is None else int(num_images)
    image_size = DEFAULTS[name]["image_size"] if image_size is None else int(image_size)
    if num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {num_images}")
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image-size must be at least {MIN_IMAGE_SIZE} for {name!r}, got {image_size}")
    if not 0.0 <= difficulty <= 3.0:
        raise UserError(f"difficulty must be in [0, 3], got {difficulty}")
    gen = _GENERATORS[name](num_images, image_size, int(seed), float(difficulty))
    if name == "natural" and len(gen.classes) < 2:
        raise UserError("the embedded 'natural' dataset needs scikit-image's bundled photos; "
                        "reinstall scikit-image")
    return gen
