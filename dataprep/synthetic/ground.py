"""Ground-cover textures shared by several aerial scene classes: grass, tree canopy, bare soil.

Each returns float32 RGB (S x S x 3, 0..1) or a mask (S x S). Colours are rough sRGB readings of
typical aerial photographs (RESISC-45 / UC Merced tiles), jittered per image so that no class owns
a colour: the classes must be told apart by structure, which is what a CNN sees and a linear model
on raw pixels does not.
"""

from __future__ import annotations

import numpy as np

from dataprep.synthetic.noise import F32, fbm, hillshade, jitter, noise, soft

GRASS = [(0.33, 0.42, 0.22), (0.42, 0.47, 0.27), (0.55, 0.53, 0.35), (0.28, 0.36, 0.2)]
TREE = [(0.13, 0.22, 0.11), (0.2, 0.28, 0.14), (0.25, 0.3, 0.17), (0.38, 0.33, 0.16)]
SOIL = [(0.45, 0.36, 0.27), (0.6, 0.53, 0.42), (0.52, 0.45, 0.38), (0.66, 0.6, 0.5)]


def pick(rng: np.random.Generator, palette, spread: float = 0.12) -> np.ndarray:
    """One jittered colour from a palette."""
    return jitter(rng, palette[rng.integers(len(palette))], spread)


def mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two images or colours by a mask t (S x S) in 0..1."""
    t = t[..., None]
    return (a * (1.0 - t) + b * t).astype(F32)


def grain(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    """Multiplicative fine texture (S x S x 1) around 1: the small-scale clutter of real ground."""
    return (1.0 + amount * fbm(rng, size, size / 6.0, 2)[0])[..., None]


def grass(rng: np.random.Generator, size: int) -> np.ndarray:
    """Meadow: two grass tones blended by low-frequency noise, with fine grain."""
    a, b = pick(rng, GRASS), pick(rng, GRASS + SOIL[:2])
    t = np.clip(0.5 + 0.35 * fbm(rng, size, rng.uniform(1.5, 4.0))[0], 0.0, 1.0)
    return mix(np.broadcast_to(a, (size, size, 3)), b, t) * grain(rng, size, 0.08)


def canopy_height(rng: np.random.Generator, size: int, crown: float) -> np.ndarray:
    """Bumpy field whose maxima are tree crowns `crown` image-units across."""
    cells = min(1.0 / crown, size / 3.0)  # a crown narrower than ~3 px would only alias
    return noise(rng, size, cells)[0] + 0.45 * noise(rng, size, min(2.2 * cells, size / 2.5))[0]


def canopy(rng: np.random.Generator, size: int, crown: float, sun: float) -> np.ndarray:
    """Closed tree canopy: shaded crowns over dark gaps, two species mixed at low frequency."""
    h = canopy_height(rng, size, crown)
    shade = hillshade(h, sun, 0.35 * crown * size)
    species = np.clip(0.5 + 0.5 * fbm(rng, size, rng.uniform(1.0, 3.0))[0], 0.0, 1.0)
    leaf = mix(np.broadcast_to(pick(rng, TREE), (size, size, 3)), pick(rng, TREE), species)
    gap = soft(h, rng.uniform(-1.2, -0.4), 0.5)  # 0 in the shadowed gaps between crowns
    light = np.clip(shade * (0.35 + 0.65 * gap), 0.15, 1.6)
    return (leaf * light[..., None]).astype(F32)


def tree_mask(rng: np.random.Generator, size: int, cover: float, crown: float) -> np.ndarray:
    """Scattered clumps of trees covering roughly `cover` of the ground (soft mask)."""
    clumps = fbm(rng, size, rng.uniform(2.0, 5.0), 2)[0]
    crowns = canopy_height(rng, size, crown)
    thr = np.quantile(clumps, 1.0 - cover) if cover > 0 else np.inf
    return soft(clumps + 0.4 * crowns, thr, 0.3)


def soil(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bare earth or gravel: soil tone with patchy moisture and grain."""
    base = np.broadcast_to(pick(rng, SOIL), (size, size, 3))
    damp = np.clip(0.5 + 0.3 * fbm(rng, size, rng.uniform(2.0, 6.0))[0], 0.0, 1.0)
    return mix(base, base * 0.75, damp) * grain(rng, size, 0.12)
