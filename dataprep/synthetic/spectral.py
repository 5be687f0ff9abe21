"""A Sentinel-2-like 13-band sensor over the embedded aerial scenes: the `s2-target` dataset.

Each class borrows the spatial layout of one of `sat`'s scene renderers (scenes.SCENES: shorelines,
canopies, parcels, street grids) and gives it physics: every pixel of the clean RGB scene is
unmixed into three class-specific surface materials (exact linear unmixing against the materials'
red, green and blue reflectances), and the pixel's 13-band spectrum is that mixture of the
materials' reflectance spectra. Visible bands so follow the scene; red edge, NIR and SWIR follow
the materials: vegetation dark in red and bright from the red edge on, water dark beyond green,
soil and sand rising towards SWIR, built-up surfaces flat. Then an atmosphere and a sensor:
illumination, haze (path radiance, strongest in the coastal and blue bands), water-vapour
absorption in B09, near-zero cirrus-band signal (B10 sees the ground through strong absorption),
each band's ground resolution (10, 20 or 60 m: blurred to match), and signal-dependent noise;
12-bit quantisation (reflectance x 4095, clipped to 0..4095, stored as uint16).

Reflectances are rough readings of published spectral libraries (USGS splib07, ECOSTRESS) at
Sentinel-2's band centres (ESA, Sentinel-2 User Handbook): plausible, not a calibrated model.
"""

from __future__ import annotations

import numpy as np

from dataprep.synthetic.noise import F32, blur

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
CENTRE_NM = (443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1375, 1610, 2190)
GROUND_M = (60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 60, 20, 20)
RGB = (BANDS.index("B04"), BANDS.index("B03"), BANDS.index("B02"))
LEVELS = 4095  # 12 bits: reflectance 1.0 -> 4095
TILE_M = 10 * 64  # a tile's side on the ground: 64 px of 10 m, as EuroSAT-MS (whatever the pixel count)

# Surface reflectance (0..1) at the 13 band centres (B10 listed as the surface's; the atmosphere
# then removes nearly all of it).
MATERIALS = {
    "clear_water": (0.060, 0.055, 0.045, 0.022, 0.016, 0.011, 0.009, 0.007, 0.006, 0.004, 0.002, 0.003, 0.002),
    "turbid_water": (0.070, 0.075, 0.090, 0.065, 0.055, 0.035, 0.028, 0.022, 0.019, 0.012, 0.004, 0.006, 0.004),
    "forest": (0.025, 0.030, 0.055, 0.030, 0.085, 0.240, 0.300, 0.330, 0.340, 0.320, 0.080, 0.160, 0.075),
    "grass": (0.035, 0.040, 0.080, 0.050, 0.120, 0.270, 0.330, 0.350, 0.360, 0.340, 0.100, 0.240, 0.130),
    "green_crop": (0.030, 0.035, 0.085, 0.040, 0.130, 0.330, 0.420, 0.450, 0.460, 0.430, 0.110, 0.230, 0.110),
    "stubble": (0.060, 0.070, 0.100, 0.140, 0.170, 0.200, 0.220, 0.240, 0.250, 0.240, 0.150, 0.330, 0.260),
    "soil": (0.070, 0.085, 0.125, 0.175, 0.205, 0.225, 0.245, 0.265, 0.275, 0.270, 0.200, 0.360, 0.300),
    "sand": (0.150, 0.180, 0.250, 0.320, 0.350, 0.370, 0.385, 0.400, 0.410, 0.400, 0.300, 0.480, 0.420),
    "concrete": (0.130, 0.150, 0.180, 0.200, 0.210, 0.220, 0.225, 0.230, 0.235, 0.230, 0.180, 0.260, 0.240),
    "roof_tile": (0.060, 0.070, 0.090, 0.200, 0.240, 0.270, 0.290, 0.300, 0.305, 0.300, 0.220, 0.350, 0.300),
    "asphalt": (0.055, 0.060, 0.070, 0.080, 0.085, 0.090, 0.095, 0.100, 0.102, 0.100, 0.080, 0.115, 0.110),
}

# class -> (the `sat` scene that lends its layout, three materials it is unmixed into)
CLASSES = {
    "water": ("lake", ("clear_water", "turbid_water", "grass")),
    "river": ("river", ("turbid_water", "forest", "soil")),
    "forest": ("forest", ("forest", "grass", "soil")),
    "cropland": ("cropland", ("green_crop", "stubble", "soil")),
    "pasture": ("meadow", ("grass", "soil", "forest")),
    "urban": ("residential", ("roof_tile", "concrete", "grass")),
    "industrial": ("industrial", ("concrete", "asphalt", "grass")),
    "bare_soil": ("dunes", ("sand", "soil", "asphalt")),
}


def scene_to_spectra(rgb: np.ndarray, materials: tuple[str, str, str]) -> np.ndarray:
    """Clean sRGB scene S x S x 3 (0..1) -> surface reflectance S x S x 13: per pixel, the mixture
    of `materials` (weights >= 0 summing to 1) whose red, green and blue reflectances come nearest
    the scene's (least squares with the sum as a fourth equation, then onto the simplex), times the
    scene's own shading relative to that mixture (shadows, crowns, grain), bounded so a material's
    spectrum keeps its level."""
    spectra = np.array([MATERIALS[m] for m in materials], dtype=F32)  # 3 x 13
    linear = rgb.astype(F32) ** 2.2 * 0.45  # display values -> reflectance-like, sat's palette to ~0.3
    system = np.vstack([spectra[:, RGB].T, np.full((1, 3), _SUM_WEIGHT, F32)])  # 4 equations, 3 weights
    rhs = np.concatenate([linear, np.full(linear.shape[:2] + (1,), _SUM_WEIGHT, F32)], axis=2)
    weights = np.clip(rhs @ np.linalg.pinv(system).T.astype(F32), 0.0, None)
    weights /= np.maximum(weights.sum(2, keepdims=True), 1e-6)
    mixed = weights @ spectra
    shade = linear.sum(2) / np.maximum(mixed[..., list(RGB)].sum(2), 1e-6)
    shade = np.clip(shade / np.median(shade), 0.5, 1.5)  # relative shading only: levels stay the materials'
    return (mixed * shade[..., None]).astype(F32)


_SUM_WEIGHT = 0.3  # weight of "the weights sum to 1" against reflectances of ~0.05-0.3


def observe(rng: np.random.Generator, surface: np.ndarray, difficulty: float = 1.0) -> np.ndarray:
    """Surface reflectance S x S x 13 -> uint16 12-bit digital numbers, through a varied
    atmosphere and a sensor with each band's resolution and noise."""
    size, d = surface.shape[0], float(difficulty)
    sun = np.exp(rng.normal(0.0, 0.12 * d))  # illumination (season, sun elevation)
    gain = np.exp(rng.normal(0.0, 0.02 * d, len(BANDS))).astype(F32)  # per-band calibration drift
    haze = rng.uniform(0.0, 0.04 * d)  # Rayleigh / aerosol path radiance, ~ wavelength^-2
    path = haze * (np.array(CENTRE_NM, F32) / 443.0) ** -2.0
    top = surface * sun * gain + path
    top[..., BANDS.index("B09")] *= rng.uniform(0.35, 0.7)  # water vapour absorption at 945 nm
    b10 = BANDS.index("B10")
    top[..., b10] = top[..., b10] * 0.03 + rng.uniform(0.0, 0.006 * d)  # 1375 nm: the ground barely shows
    metres_per_px = TILE_M / size
    for band, ground in enumerate(GROUND_M):  # coarser bands are blurrier, as resampled to 10 m
        top[..., band : band + 1] = blur(top[..., band : band + 1], 0.5 * ground / metres_per_px)
    noise = np.sqrt(2e-6 + 4e-5 * np.clip(top, 0.0, None))  # read noise + shot noise, in reflectance
    top = top + rng.normal(0.0, 1.0, top.shape).astype(F32) * noise * d
    return np.clip(np.rint(top * LEVELS), 0, LEVELS).astype(np.uint16)


def true_colour(img: np.ndarray, top: float = 0.25) -> np.ndarray:
    """uint8 RGB preview of a 13-band image (B04, B03, B02 stretched from 0..`top` reflectance)."""
    rgb = img[..., list(RGB)].astype(np.float32) / (LEVELS * top)
    return (np.clip(rgb, 0.0, 1.0) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
