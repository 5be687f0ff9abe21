"""Rasters (12/16-bit, float, N bands: `fasthpt prep`'s raster path, dataprep/rasters.py) in the
loaders: the multispectral augmentation, one definition every backend implements.

A raster sample is an H x W x C array in its stored dtype and units (no scaling in storage). Each
view, in float32 stored units:

1. random-resized crop to res x res, every band, antialiased bilinear (the RGB path's filter);
2. jitter (with the policy's probability): ONE affine pass with the view's brightness factor b
   and contrast factor c, ``x' = b * (c * x + (1 - c) * m_c)`` where m_c is band c's mean over the
   view, then clamped to band c's valid range [lo_c, hi_c] (the train split's observed range,
   manifest ``value_range``; the analogue of 0..255). Brightness scales towards 0 (the absolute
   zero of the data's levels), contrast blends each band towards its own mean (bands of different
   scales are never mixed). Without the clamp the two commute, so there is no op order;
3. Gaussian blur of every band (the policy's probability and sigma; kernel radius ceil(3 sigma),
   capped as the RGB path's, reflected borders);
4. horizontal flip;
5. per-band standardisation ``(x - mean_c) / std_c`` (manifest, stored units).

Saturation, hue and grayscale are colour operations of 8-bit RGB: rasters never get them
(``spectral_policy``), whatever their band count; a 12/16-bit or float RGB dataset gets brightness
and contrast only. The draws are the RGB path's (the same crop, coins, factors and sigma for a
sample): the `ffcv` and `dali` backends key them by (seed, epoch, sample, view)
(fasthpt.data.draws), the torch baseline by its per-sample torch seed.

Evaluation view: resize the shorter side to round(res * 256/224) (antialiased) and centre-crop res,
then standardise. The torch functions below are the reference the other backends are tested to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode

from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError
from fasthpt.manifest import Manifest


@dataclass(frozen=True)
class Bands:
    """What the loaders need of a raster dataset: band count, stored dtype, valid range and
    standardisation per band (float32 arrays of length ``bands``)."""

    bands: int
    dtype: str
    lo: np.ndarray
    hi: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def bands_of(manifest: Manifest) -> Bands | None:
    """The dataset's Bands, or None for an 8-bit (JPEG) dataset."""
    if not manifest.is_raster:
        return None
    value_range = manifest.value_range
    if value_range is None or len(value_range) != manifest.bands:
        raise UserError(f"{manifest.root}: a raster manifest without a value_range per band; re-run `fasthpt prep`")
    rng = np.asarray(value_range, dtype=np.float32)
    std = np.asarray(manifest.std, dtype=np.float32)
    if (std <= 0).any():
        flat = [i for i, s in enumerate(std) if s <= 0]
        names = manifest.band_names or [f"band {i}" for i in range(manifest.bands)]
        raise UserError(f"{manifest.root}: band {names[flat[0]]} holds one value over the train split (std 0): "
                        "it cannot be standardised; drop the band at prep")
    return Bands(manifest.bands, manifest.dtype, rng[:, 0].copy(), rng[:, 1].copy(),
                 np.asarray(manifest.mean, dtype=np.float32), std)


def spectral_policy(policy: AugPolicy) -> AugPolicy:
    """The policy as applied to rasters: saturation, hue and grayscale off (module doc)."""
    return dataclasses.replace(policy, saturation=0.0, hue=0.0, gray_p=0.0).validate()


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """An H x W x C stored raster as a float32 C x H x W tensor (stored units)."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


def crop(x: torch.Tensor, box, res: int) -> torch.Tensor:
    return F.resized_crop(x, *box, [res, res], interpolation=InterpolationMode.BILINEAR, antialias=True)


def jitter(x: torch.Tensor, b: float, c: float, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """b * (c x + (1 - c) mean_band(x)), clamped per band (module doc, step 2)."""
    m = x.mean(dim=(1, 2), keepdim=True)
    return torch.maximum(torch.minimum(b * (c * x + (1 - c) * m), hi.view(-1, 1, 1)), lo.view(-1, 1, 1))


def blur(x: torch.Tensor, sigma: float, kernel: int) -> torch.Tensor:
    return F.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def standardise(x: torch.Tensor, bands: Bands) -> torch.Tensor:
    mean, std = torch.from_numpy(bands.mean), torch.from_numpy(bands.std)
    shape = (-1, 1, 1) if x.dim() == 3 else (1, -1, 1, 1)
    return (x - mean.view(shape)) / std.view(shape)


def view(x: torch.Tensor, box, jittered: bool, b: float, c: float, blurred: bool, sigma: float, flip: bool,
         res: int, bands: Bands, kernel: int) -> torch.Tensor:
    """One augmented view (float32 C x res x res, stored units, not yet standardised) of ``x``
    (C x H x W) with the given draws; ``kernel``: the blur's kernel size."""
    out = crop(x, box, res)
    if jittered:
        out = jitter(out, b, c, torch.from_numpy(bands.lo), torch.from_numpy(bands.hi))
    if blurred:
        out = blur(out, sigma, kernel)
    return out.flip(-1) if flip else out


def eval_view(x: torch.Tensor, res: int, resize_to: int) -> torch.Tensor:
    out = F.resize(x, resize_to, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.center_crop(out, [res, res])
