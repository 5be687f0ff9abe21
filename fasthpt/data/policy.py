"""The augmentation policy as data: one dataclass that every loader backend translates.

Defaults are MoCo-v2 as used by HPT (Reed et al. 2022; the OpenSelfSup configs of
cjrd/self-supervised-pretraining, e.g. configs/hpt-pretrain/resisc-ucmerced/
base-resisc-ucmerced-config.py): RandomResizedCrop scale (0.2, 1.0); ColorJitter (0.4, 0.4, 0.4,
hue 0.4 -- HPT's configs; plain MoCo-v2 uses hue 0.1) applied with p 0.8; grayscale p 0.2; Gaussian
blur sigma in [0.1, 2.0] px for 224 px views with p 0.5; horizontal flip p 0.5.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from fasthpt.errors import UserError


@dataclass
class AugPolicy:
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.4  # HPT's configs; MoCo-v2 uses 0.1 (preset "mocov2-hue0.1")
    gray_p: float = 0.2
    blur_p: float = 0.5
    # MoCo-v2's blur is PIL's GaussianBlur(radius=sigma), sigma ~ U(0.1, 2.0) px, on 224 px views,
    # with no fixed kernel size. The range is in pixels of a view of side blur_ref_res: a view of
    # another side draws sigma from the range scaled by res / blur_ref_res, so the blur covers the
    # same fraction of the view (0: the range is in pixels at every side).
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    blur_ref_res: int = 224
    # The kernel applied is sized by sigma, radius ceil(3 sigma) (exact to ~1e-3), and never wider
    # than this fraction of the view: a bound on the cost of a user's very large sigma, not a
    # MoCo constant (with the default range it never binds).
    blur_kernel_frac: float = 0.1
    flip_p: float = 0.5

    def validate(self) -> AugPolicy:
        def prob(name):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise UserError(f"aug.{name} must be a probability in [0, 1], got {v}")

        for name in ("jitter_p", "gray_p", "blur_p", "flip_p"):
            prob(name)
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                raise UserError(f"aug.{name} must be [low, high] with 0 < low <= high, got {lo_hi}")
        if self.crop_scale[1] > 1.0:
            raise UserError(f"aug.crop_scale high must be <= 1, got {self.crop_scale[1]}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise UserError(f"aug.{name} must be >= 0")
        if not 0 <= self.hue <= 0.5:
            raise UserError(f"aug.hue must be in [0, 0.5], got {self.hue}")
        if self.blur_ref_res < 0:
            raise UserError("aug.blur_ref_res must be >= 0 (0: sigma in pixels at every side), "
                            f"got {self.blur_ref_res}")
        if not 0 < self.blur_kernel_frac <= 1:
            raise UserError(f"aug.blur_kernel_frac must be in (0, 1], got {self.blur_kernel_frac}")
        return self

    def sigma_range(self, res: int) -> tuple[float, float]:
        """The blur sigma range in pixels for views of side ``res`` (see ``blur_ref_res``)."""
        scale = res / self.blur_ref_res if self.blur_ref_res else 1.0
        return self.blur_sigma[0] * scale, self.blur_sigma[1] * scale

    @property
    def uses_color(self) -> bool:
        return self.jitter_p > 0 and any(
            (self.brightness, self.contrast, self.saturation, self.hue)
        )

    def blur_kernel_cap(self, res: int) -> int:
        """The widest blur kernel at view side ``res``: blur_kernel_frac * res rounded, made odd, at
        least 3 (23 taps at 224 px). Every backend bounds its kernel by it; the torch baseline,
        whose torchvision GaussianBlur has a fixed size, blurs with it."""
        return max(3, int(round(self.blur_kernel_frac * res)) | 1)

    def blur_kernel_size(self, res: int, sigma: float | None = None) -> int:
        """Odd kernel size: radius ceil(3 sigma) (exact to ~1e-3), capped at blur_kernel_cap(res);
        ``sigma`` None: the largest of ``sigma_range(res)``."""
        sigma = self.sigma_range(res)[1] if sigma is None else sigma
        return min(2 * math.ceil(3 * sigma) + 1, self.blur_kernel_cap(res))

    @classmethod
    def preset(cls, name: str) -> AugPolicy:
        """Named variants, including the ablations of the paper's augmentation study."""
        if name not in PRESETS:
            raise UserError(f"unknown augmentation preset {name!r}; valid: {', '.join(PRESETS)}")
        return dataclasses.replace(cls(), **PRESETS[name])


PRESETS: dict[str, dict] = {
    "mocov2": {},  # HPT's MoCo-v2 (hue 0.4)
    "mocov2-hue0.1": {"hue": 0.1},  # plain MoCo-v2
    "no-color": {"jitter_p": 0.0},
    "no-gray": {"gray_p": 0.0},
    # The authors' crop ablations have no flip (configs/hpt-pretrain/bdd_crop_blur/base-bdd_crop_blur-config.py,
    # bdd_crop_only/base-bdd_crop_only-config.py: RandomResizedCrop [+ blur], ToTensor, Normalize); their
    # rm_color and rm_gray configs keep RandomHorizontalFlip.
    "crop-blur": {"jitter_p": 0.0, "gray_p": 0.0, "flip_p": 0.0},
    "crop-only": {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "flip_p": 0.0},
}
