"""Vectorised numpy field primitives for the procedural aerial scenes (dataprep/synthetic/scenes.py).

Everything works on square float32 fields of side S (the output resolution) in *image units*:
coordinates run over [-0.5, 0.5), so a scene rendered at 32 px and at 256 px shows the same ground,
only sharper. Value noise is a random lattice upsampled separably (rows, then columns) with smoothstep
weights, all in whole-array numpy operations.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

F32 = np.float32


@lru_cache(maxsize=16)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (X, Y), each S x S, in image units [-0.5, 0.5); read-only."""
    t = ((np.arange(size, dtype=F32) + 0.5) / size - 0.5).astype(F32)
    y, x = np.meshgrid(t, t, indexing="ij")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _axis_taps(size: int, cells: int, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """For each of `size` pixels: the lattice node to its left and the smoothstep weight of the
    node to its right (lattice of cells+2 nodes, shifted by `offset` cells)."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size * cells + offset
    i0 = np.floor(t).astype(np.intp)
    f = t - i0
    return i0, (f * f * (3.0 - 2.0 * f)).astype(F32)  # smoothstep: C1, hides the lattice better


def noise(rng: np.random.Generator, size: int, cells: float, channels: int = 1) -> np.ndarray:
    """Value noise, shape (channels, S, S), roughly zero-mean, features ~ S/cells pixels wide.

    Separable two-tap interpolation by gathers, not matmuls: O(S^2) per octave whatever the
    lattice size, and no multi-threaded BLAS call to fight dataprep's worker processes."""
    n = max(1, int(round(cells)))
    lattice = rng.standard_normal((channels, n + 2, n + 2), dtype=F32)
    iy, wy = _axis_taps(size, n, rng.random())
    ix, wx = _axis_taps(size, n, rng.random())
    # Columns first on the small lattice, then whole contiguous rows: the big gather copies rows.
    cols = np.take(lattice, ix, axis=2)
    cols += (np.take(lattice, ix + 1, axis=2) - cols) * wx
    out = np.take(cols, iy, axis=1)
    out += (np.take(cols, iy + 1, axis=1) - out) * wy[None, :, None]
    return out


def fbm(rng: np.random.Generator, size: int, cells: float, octaves: int | None = None,
        persistence: float = 0.5, channels: int = 1, finest_px: float = 2.0) -> np.ndarray:
    """Fractal (1/f-like) noise: octaves of value noise at doubling frequency, standardised per
    channel to mean 0, std 1 so callers can threshold it at a chosen coverage.

    Without `octaves`, octaves stop when features reach `finest_px` pixels. Fields that are
    hill-shaded need finest_px >= 6: value noise has zero slope at every lattice node, and the
    gradient of a fine octave shows that lattice as a grid of dots."""
    if octaves is None:
        octaves = max(1, int(np.log2(max(size / finest_px, 1.0) / max(cells, 1.0))) + 1)
    out = np.zeros((channels, size, size), dtype=F32)
    amp = 1.0
    for k in range(octaves):
        out += amp * noise(rng, size, cells * 2**k, channels)
        amp *= persistence
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-6
    return out


def rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame rotated by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def soft(x: np.ndarray, edge: float | np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased step: 0 below edge, 1 above, linear over `width` (use ~1 px in image units)."""
    return np.clip((x - edge) / width + 0.5, 0.0, 1.0)


def hillshade(h: np.ndarray, azimuth: float, strength: float) -> np.ndarray:
    """Lambert-like shading factor (around 1) of a height field lit from `azimuth` radians."""
    gy, gx = np.gradient(h)
    return 1.0 + strength * (gx * np.cos(azimuth) + gy * np.sin(azimuth))


def shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate a 2-D field by whole pixels, zero-filled (used to cast shadows)."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of an S x S x C image over its two spatial axes; no-op below 0.1 px.

    scipy's C filter runs single-threaded: a matmul formulation would hand 96+ px images to a
    multi-threaded BLAS, which thrashes when dataprep already runs one worker per core."""
    if sigma_px < 0.1:
        return img
    return ndimage.gaussian_filter(img, sigma=(sigma_px, sigma_px, 0.0), mode="reflect", truncate=3.0)


def hash_index(*keys: np.ndarray, mod: int) -> np.ndarray:
    """Deterministic integer hash of integer lattice coordinates into [0, mod) (spatial
    'random table' lookups: one colour per field parcel, per house, per building)."""
    h = np.zeros(np.shape(keys[0]), dtype=np.int64)
    for k, prime in zip(keys, (73856093, 19349663, 83492791, 50331653)):
        h ^= np.asarray(k, dtype=np.int64) * prime
    return (h % mod + mod) % mod


def jitter(rng: np.random.Generator, color, spread: float) -> np.ndarray:
    """A colour (RGB 0..1) with log-normal brightness and per-channel variation."""
    c = np.asarray(color, dtype=F32)
    return np.clip(c * np.exp(rng.normal(0.0, spread, 3)) * np.exp(rng.normal(0.0, spread)),
                   0.0, 1.0).astype(F32)
