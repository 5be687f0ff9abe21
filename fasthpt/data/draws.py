"""The augmentation policy's random draws, counter-based and vectorised over a batch (NumPy).

Every number is a pure function of (seed, epoch, sample index, view, draw number): the same keys
and the same numbers as the `ffcv` backend's numba kernels (ffcv_kernels: mix64, uniform,
epoch_key, view_key, sample_crop, sample_view_params; tests/data/test_draws.py checks that they
agree), here for whole batches at once. The `dali` backend feeds these draws into its pipeline
(so its batches are a function of the epoch, not of a pipeline's random state: one pipeline serves
every epoch, a resume repeats the run exactly) and the `ffcv` backend reports them in debug mode.
A sample therefore draws the same crop, jitter, gray, blur and flip on both backends.

Randomness: splitmix64's finaliser (Steele, Lea & Flood, OOPSLA 2014) over a per-view key;
``uniform(key, n)`` is the n-th double in [0, 1) of the stream ``key``.
"""

from __future__ import annotations

import numpy as np

from fasthpt.data.policy import AugPolicy

_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 constants (Steele et al. 2014)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: the splitmix64 increment
_INV53 = 1.0 / 9007199254740992.0  # 2^-53: top 53 bits -> a double in [0, 1)
CROP_TRIES = 10  # torchvision's RandomResizedCrop attempts; 4 draws each (numbers 0..39)
AUG = 64  # the first draw number of a view's other parameters (never overlaps the crop's)


def mix64(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64, as intended
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(keys: np.ndarray, n) -> np.ndarray:
    """The n-th uniform double in [0, 1) of each stream in ``keys`` (uint64 array); ``n`` an int or
    an array broadcasting against ``keys``."""
    with np.errstate(over="ignore"):
        z = keys + np.asarray(n, dtype=np.uint64) * _GOLD
    return (mix64(z) >> np.uint64(11)).astype(np.float64) * _INV53


def epoch_key(seed: int, epoch: int) -> np.uint64:
    with np.errstate(over="ignore"):
        return mix64(mix64(np.uint64(seed) * _GOLD) + np.uint64(epoch) + np.uint64(1))[()]


def view_keys(ekey: np.uint64, samples, view: int) -> np.ndarray:
    """The stream key of view ``view`` of each sample index in ``samples``."""
    samples = np.asarray(samples, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix64(np.uint64(ekey) ^ mix64(samples * np.uint64(2) + np.uint64(view) + np.uint64(1)))


def sample_crops(keys, heights, widths, scale, ratio) -> np.ndarray:
    """(N, 4) int64 boxes (top, left, h, w): torchvision's RandomResizedCrop.get_params per sample,
    drawn from ``keys``: ten attempts, the first that fits wins, else the central fallback."""
    keys = np.asarray(keys, dtype=np.uint64)
    height, width = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    n = keys.shape[0]
    logr = np.log(np.asarray(ratio, dtype=np.float64))
    t = np.arange(CROP_TRIES, dtype=np.uint64)
    k = keys[:, None]
    area = (height * width).astype(np.float64)[:, None]
    target = area * (scale[0] + (scale[1] - scale[0]) * uniform(k, 4 * t))
    aspect = np.exp(logr[0] + (logr[1] - logr[0]) * uniform(k, 4 * t + 1))
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # Python's round: half to even
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = np.argmax(fits, axis=1)
    rows = np.arange(n)
    ok = fits[rows, first]
    bh, bw = h[rows, first], w[rows, first]
    top = (uniform(keys, 4 * first.astype(np.uint64) + 2) * (height - bh + 1)).astype(np.int64)
    left = (uniform(keys, 4 * first.astype(np.uint64) + 3) * (width - bw + 1)).astype(np.int64)
    # fallback: the largest central crop with the ratio clamped into range (torchvision)
    in_ratio = width / height
    lo, hi = np.exp(logr)
    fw = np.where(in_ratio < lo, width, np.where(in_ratio > hi, np.rint(height * hi).astype(np.int64), width))
    fh = np.where(in_ratio < lo, np.rint(width / lo).astype(np.int64), height)
    boxes = np.stack([top, left, bh, bw], 1)
    fallback = np.stack([(height - fh) // 2, (width - fw) // 2, fh, fw], 1)
    return np.where(ok[:, None], boxes, fallback)


def sample_params(keys, policy: AugPolicy, res: int) -> dict[str, np.ndarray]:
    """One view's jitter / gray / blur / flip draws per key (ffcv_kernels.sample_view_params' numbers):
    jitter, gray, blur, flip bool; factors (N, 4) float64 brightness, contrast, saturation, hue
    (neutral 1, 1, 1, 0 when a factor is off); order (N, 4) ColorJitter's op order; sigma float64
    (drawn whether or not the blur applies). jitter is True only where the policy has colour to
    jitter (AugPolicy.uses_color): where it has none, the pass changes nothing."""
    keys = np.asarray(keys, dtype=np.uint64)
    n = keys.shape[0]
    factors = np.empty((n, 4))
    for i, s in enumerate((policy.brightness, policy.contrast, policy.saturation)):
        lo = max(0.0, 1.0 - s)
        factors[:, i] = lo + (1.0 + s - lo) * uniform(keys, AUG + 1 + i) if s > 0 else 1.0
    factors[:, 3] = -policy.hue + 2.0 * policy.hue * uniform(keys, AUG + 4) if policy.hue > 0 else 0.0
    order = np.tile(np.arange(4, dtype=np.int64), (n, 1))
    rows = np.arange(n)
    for k in range(3, 0, -1):  # Fisher-Yates shuffle of (0, 1, 2, 3)
        j = (uniform(keys, AUG + 5 + k) * (k + 1)).astype(np.int64)
        order[rows, k], order[rows, j] = order[rows, j], order[rows, k].copy()
    sigma_lo, sigma_hi = policy.sigma_range(res)
    return {
        "jitter": (uniform(keys, AUG) < policy.jitter_p) & policy.uses_color,
        "factors": factors, "order": order,
        "gray": uniform(keys, AUG + 9) < policy.gray_p,
        "blur": uniform(keys, AUG + 10) < policy.blur_p,
        "sigma": sigma_lo + (sigma_hi - sigma_lo) * uniform(keys, AUG + 11),
        "flip": uniform(keys, AUG + 12) < policy.flip_p,
    }


def view_draws(seed: int, epoch: int, samples, heights, widths, policy: AugPolicy, res: int,
               views: int) -> list[dict[str, np.ndarray]]:
    """Per view, every draw of each sample in ``samples`` (sample indices of the split; images of
    ``heights`` x ``widths``): the keys of common.DRAW_DTYPES, crop as (N, 4) top, left, h, w."""
    ekey = epoch_key(seed, epoch)
    out = []
    for v in range(views):
        keys = view_keys(ekey, samples, v)
        d = sample_params(keys, policy, res)
        d["crop"] = sample_crops(keys, heights, widths, policy.crop_scale, policy.crop_ratio)
        out.append(d)
    return out
