"""Embedded datasets that need no download: `sat` (procedural aerial scenes of 13 land-use
classes), `sat-target` (new scenes of 6 of those classes: a small target domain, as UC Merced is
to RESISC-45 in the paper's chain), `s2-target` (a 13-band, 12-bit Sentinel-2-like target of 8
land-cover classes: dataprep/synthetic/spectral.py) and `natural` (crops of scikit-image's
photographs, a generic domain standing in for ImageNet).

    gen = get_generator("sat", num_images=2400, image_size=64, seed=0)
    img, label = gen.render(i)        # HxWx3 uint8 RGB, int in [0, len(gen.classes))
                                      # s2-target: HxWx13 uint16 (0..4095), gen.band_names

Each image depends only on (name, seed, index, image_size, difficulty): any index can be rendered
alone, in any process, in any order (dataprep renders indices in parallel workers). Labels are
balanced: label = i % num_classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataprep.synthetic import photos, spectral
from dataprep.synthetic.scenes import SCENES
from dataprep.synthetic.sensor import apply_sensor
from fasthpt.errors import UserError

EMBEDDED = ("sat", "sat-target", "s2-target", "natural")

# Small enough to pretrain on 2 CPU cores in minutes (the demo trains at 64 px); scale up with
# --num-images / --image-size.
DEFAULTS = {
    "sat": {"num_images": 4000, "image_size": 64},  # ~308 per class: 800 val images keep kNN/linear noise ~1.7 points
    "sat-target": {"num_images": 3000, "image_size": 32},
    "s2-target": {"num_images": 1200, "image_size": 32},  # 720 train images, rendered in seconds
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
    """Procedural aerial land-use scenes, one class per renderer in scenes.SCENES."""

    name = "sat"
    version = "sat-5"
    classes = list(SCENES)
    salt = 0x5A7  # each embedded dataset draws its own random streams: no image is in two of them

    def render(self, i: int) -> tuple[np.ndarray, int]:
        rng = self._rng(i, salt=self.salt)
        label = i % len(self.classes)
        scene = SCENES[self.classes[label]](rng, self.image_size)
        return apply_sensor(rng, scene, self.difficulty), label


class SatTargetGenerator(SatGenerator):
    """Six of `sat`'s classes, rendered anew (their own random streams, so no image is shared
    with `sat`): the demo's target, pretrained on after a base that has seen `sat`."""

    name = "sat-target"
    version = "sat-target-1"
    classes = ["circular_farmland", "river", "highway", "industrial", "beach", "meadow"]
    salt = 0x7A6


class S2TargetGenerator(_Base):
    """13 bands, 12 bits, Sentinel-2-like: each class a `sat` scene layout given per-material
    reflectance spectra, then an atmosphere and a sensor (dataprep/synthetic/spectral.py). Stored
    by prep as a raster dataset (dataprep/rasters.py): uint16, 13 bands, named B01..B12 and B8A."""

    name = "s2-target"
    version = "s2-target-1"
    classes = list(spectral.CLASSES)
    salt = 0x52A
    bands, dtype, band_names = len(spectral.BANDS), "uint16", spectral.BANDS

    def render(self, i: int) -> tuple[np.ndarray, int]:
        rng = self._rng(i, salt=self.salt)
        label = i % len(self.classes)
        scene, materials = spectral.CLASSES[self.classes[label]]
        surface = spectral.scene_to_spectra(SCENES[scene](rng, self.image_size), materials)
        return spectral.observe(rng, surface, self.difficulty), label

    @staticmethod
    def preview(img: np.ndarray) -> np.ndarray:
        """uint8 true-colour RGB of a rendered image (contact sheets)."""
        return spectral.true_colour(img)


class NaturalGenerator(_Base):
    """Random crops of real photographs; the label is the photograph's index."""

    name = "natural"
    version = "natural-1"

    @property
    def classes(self) -> list[str]:
        return list(photos.available())

    @property
    def settings(self) -> dict:
        """Adds the photo set: it follows the installed scikit-image, not only this code."""
        import skimage

        return {**super().settings, "photos": self.classes, "skimage": skimage.__version__}

    def render(self, i: int) -> tuple[np.ndarray, int]:
        rng = self._rng(i, salt=0x9A7)
        names = photos.available()
        label = i % len(names)
        return photos.crop(rng, photos.load(names[label]), self.image_size), label


_GENERATORS = {"sat": SatGenerator, "sat-target": SatTargetGenerator, "s2-target": S2TargetGenerator,
               "natural": NaturalGenerator}


def get_generator(name: str, num_images: int | None = None, image_size: int | None = None,
                  seed: int = 0, difficulty: float = 1.0):
    """The embedded dataset `name` (one of EMBEDDED); None picks the DEFAULTS.

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
