"""Camera and atmosphere applied to every clean aerial scene, whatever its class.

These nuisances are what make real tiles differ from one another and make the embedded data share
low-level statistics with photographs: exposure, a colour cast (white balance), an illumination
gradient (vignetting / sun angle), thin haze or cloud, optical blur, and sensor noise.
`difficulty` scales them (0 = clean scenes, 1 = default, 2 = harsh).
"""

from __future__ import annotations

import numpy as np

from dataprep.synthetic.noise import F32, blur, fbm, grid


def apply_sensor(rng: np.random.Generator, img: np.ndarray, difficulty: float) -> np.ndarray:
    """Float RGB scene (S x S x 3, 0..1) -> uint8 RGB photograph."""
    size = img.shape[0]
    d = float(difficulty)
    img = img * np.exp(rng.normal(0.0, 0.18 * d)) * np.exp(rng.normal(0.0, 0.04 * d, 3)).astype(F32)
    img = img * _gradient(rng, size, rng.uniform(0.0, 0.35 * d))[..., None]
    img = _haze(rng, img, rng.uniform(0.0, 0.3 * d) if rng.random() < 0.5 else 0.0)
    img = blur(img.astype(F32), rng.uniform(0.2, 0.5 + 0.5 * d) * size / 64.0)
    img = img + rng.normal(0.0, rng.uniform(0.003, 0.02 * d + 0.003), img.shape).astype(F32)
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(1.0 - 0.12 * d, 1.0 + 0.12 * d)
    return (img * 255.0 + 0.5).astype(np.uint8)


def _gradient(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Linear brightness ramp across the tile, in a random direction."""
    x, y = grid(size)
    a = rng.uniform(0.0, 2.0 * np.pi)
    return (1.0 + strength * (np.cos(a) * x + np.sin(a) * y) * 2.0).astype(F32)


def _haze(rng: np.random.Generator, img: np.ndarray, amount: float) -> np.ndarray:
    """Patchy thin cloud: blend toward a bright grey-blue veil with fractal opacity."""
    if amount <= 0.0:
        return img
    veil = np.array([0.85, 0.87, 0.9], F32) * np.exp(rng.normal(0.0, 0.05, 3)).astype(F32)
    alpha = amount * np.clip(0.6 + 0.5 * fbm(rng, img.shape[0], rng.uniform(1.0, 3.0))[0], 0.0, 1.0)
    return img * (1.0 - alpha[..., None]) + veil * alpha[..., None]
