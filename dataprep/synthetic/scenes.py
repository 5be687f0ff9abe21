"""The land-use classes of the embedded `sat` dataset, one renderer per class.

A renderer takes (rng, S) and returns the clean scene, float32 RGB S x S x 3 in 0..1, seen from
above at a random rotation, scale and sun azimuth. Sensor effects (exposure, colour cast, haze,
blur, noise) are added afterwards by dataprep/synthetic/sensor.py, identically for every class. The
class list loosely follows RESISC-45 / UC Merced categories (Cheng et al. 2017; Yang & Newsam 2010).
"""

from __future__ import annotations

import numpy as np

from dataprep.synthetic import ground as g
from dataprep.synthetic.noise import F32, fbm, grid, hash_index, hillshade, jitter, noise, rotate, shift, soft

WATER = [(0.08, 0.15, 0.25), (0.12, 0.28, 0.3), (0.2, 0.27, 0.2), (0.3, 0.28, 0.2), (0.14, 0.22, 0.4)]
SAND = [(0.85, 0.78, 0.62), (0.78, 0.68, 0.5), (0.8, 0.58, 0.38), (0.88, 0.84, 0.72)]
ASPHALT = [(0.3, 0.3, 0.3), (0.4, 0.4, 0.39), (0.24, 0.25, 0.27)]
ROOF = [(0.55, 0.32, 0.25), (0.25, 0.25, 0.27), (0.5, 0.5, 0.5), (0.42, 0.32, 0.26), (0.75, 0.75, 0.74),
        (0.45, 0.48, 0.52), (0.52, 0.4, 0.32)]
CROP = [(0.35, 0.5, 0.2), (0.72, 0.64, 0.4), (0.5, 0.38, 0.28), (0.22, 0.36, 0.15), (0.66, 0.6, 0.5),
        (0.45, 0.5, 0.25)]
ROCK = [(0.42, 0.4, 0.37), (0.5, 0.42, 0.34), (0.35, 0.33, 0.32)]


def _frame(rng: np.random.Generator, size: int, warp: float = 0.0):
    """Randomly rotated ground coordinates (u, v), optionally bent by a smooth warp."""
    x, y = grid(size)
    u, v = rotate(x, y, rng.uniform(0.0, 2.0 * np.pi))
    if warp > 0:
        w = fbm(rng, size, rng.uniform(1.0, 2.5), 2, channels=2) * warp
        u, v = u + w[0], v + w[1]
    return u, v


def _palette(rng: np.random.Generator, colours, n: int, spread: float = 0.12) -> np.ndarray:
    return np.stack([g.pick(rng, colours, spread) for _ in range(n)])


def _cells(u: np.ndarray, size: float, rng: np.random.Generator):
    """Lattice index and fractional position (0..1) of each pixel along one axis."""
    t = u / size + rng.random()
    i = np.floor(t)
    return i.astype(np.int64), (t - i).astype(F32)


def _edge_dist(frac: np.ndarray, size: float) -> np.ndarray:
    """Distance (image units) from a point in a cell to the nearer cell border."""
    return np.minimum(frac, 1.0 - frac) * size


def _stripes(coord: np.ndarray, freq: np.ndarray, size: int) -> np.ndarray:
    """sin stripes, attenuated where finer than the pixel grid resolves (a camera's low-pass)."""
    fade = np.clip((size / 2.0 - freq) / (size / 6.0), 0.0, 1.0)
    return np.sin(2.0 * np.pi * freq * coord) * fade


def _band(dist: np.ndarray, width: float, size: int) -> np.ndarray:
    """Anti-aliased mask of the points within width/2 of a curve (`dist`: distance to it). A band
    thinner than a pixel is drawn one pixel wide at proportionally lower contrast (its area
    coverage) instead of being point-sampled into dots."""
    px = 1.0 / size
    return soft(max(width, px) / 2.0 - dist, 0.0, px) * min(1.0, width / px)


def _lines(coord: np.ndarray, pitch: float, width: float, size: int) -> np.ndarray:
    """Parallel lines every `pitch` image units, `width` wide."""
    return _band(np.abs(np.mod(coord / pitch + 0.5, 1.0) - 0.5) * pitch, width, size)


def cropland(rng, size):
    """Rectangular parcels, each ploughed or sown in stripes at its own pitch and direction."""
    u, v = _frame(rng, size, warp=rng.uniform(0.0, 0.03))
    su, sv = rng.uniform(0.12, 0.5, 2)
    a, fa = _cells(u, su, rng)
    b, fb = _cells(v, sv, rng)
    k = hash_index(a, b, mod=32)
    colours = _palette(rng, CROP, 32, 0.1)
    along = rng.random(32) < 0.5
    freq = rng.uniform(12.0, 45.0, 32)
    amp = rng.uniform(0.05, 0.3, 32)
    coord = np.where(along[k], u, v)
    img = colours[k] * (1.0 + amp[k] * _stripes(coord, freq[k], size))[..., None]
    border = soft(-np.minimum(_edge_dist(fa, su), _edge_dist(fb, sv)), -0.008, 1.0 / size)
    img = g.mix(img, g.pick(rng, g.GRASS + g.TREE), border * rng.uniform(0.3, 1.0))
    return img * g.grain(rng, size, 0.06)


def circular_farmland(rng, size):
    """Centre-pivot irrigation: crop discs on a square pitch over dry land, some split into
    sectors sown at different times, with wheel-track rings and the pivot arm."""
    u, v = _frame(rng, size)
    pitch = rng.uniform(0.25, 0.6)
    a, fa = _cells(u, pitch, rng)
    b, fb = _cells(v, pitch, rng)
    dx, dy = (fa - 0.5) * pitch, (fb - 0.5) * pitch
    r = np.sqrt(dx * dx + dy * dy)
    k = hash_index(a, b, mod=32)
    disc = soft(pitch * rng.uniform(0.4, 0.5) - r, 0.0, 1.0 / size) * (rng.random(32) < 0.85)[k]
    sectors = rng.integers(1, 5, 32)[k]
    sector = np.floor((np.arctan2(dy, dx) / (2 * np.pi) + 0.5) * sectors).astype(np.int64)
    crop = _palette(rng, CROP, 32, 0.1)[(k + 7 * sector) % 32]
    crop = crop * (1.0 + 0.06 * _stripes(r, np.full_like(r, rng.uniform(15, 40)), size))[..., None]
    angle = rng.uniform(0, 2 * np.pi, 32)[k]
    arm = _band(np.abs(dx * np.sin(angle) - dy * np.cos(angle)), 0.006, size)
    arm *= (dx * np.cos(angle) + dy * np.sin(angle)) > 0
    dry = g.mix(g.soil(rng, size), g.grass(rng, size), rng.uniform(0.0, 0.4) * np.ones_like(r))
    return g.mix(dry, crop * (1.0 - 0.3 * arm)[..., None], disc) * g.grain(rng, size, 0.05)


def _soil_track(rng, size, img, warp, width):
    """A straight-ish dirt track across ``img`` (random offset, width in [width[0], width[1]])."""
    _, v = _frame(rng, size, warp=warp)
    track = _band(np.abs(v - rng.uniform(-0.3, 0.3)), rng.uniform(*width), size)
    return g.mix(img, g.soil(rng, size), track)


def forest(rng, size):
    """Closed canopy, sometimes cut by a track or a small clearing."""
    sun = rng.uniform(0, 2 * np.pi)
    img = g.canopy(rng, size, rng.uniform(0.025, 0.07), sun)
    if rng.random() < 0.35:
        img = _soil_track(rng, size, img, 0.05, (0.008, 0.024))
    return img


def lake(rng, size):
    """A water body with an irregular shoreline, a thin bank and vegetated land."""
    h = fbm(rng, size, rng.uniform(1.2, 3.0))[0]
    level = rng.uniform(-0.7, 0.7)
    land = _land(rng, size)
    bank = soft(level + rng.uniform(0.05, 0.25) - h, 0.0, 0.05)
    img = g.mix(land, g.soil(rng, size) * 1.1, bank)
    return g.mix(img, _water(rng, size, np.clip((level - h) / 1.5, 0.0, 1.0)), soft(level - h, 0.0, 0.04))


def _land(rng, size):
    """Vegetated background: grass with clumps of trees."""
    base = g.grass(rng, size)
    trees = g.tree_mask(rng, size, rng.uniform(0.0, 0.5), rng.uniform(0.03, 0.06))
    return g.mix(base, g.canopy(rng, size, 0.04, rng.uniform(0, 2 * np.pi)), trees)


def _water(rng, size, depth):
    """Water, darker with depth, with faint wind ripples."""
    shallow, deep = g.pick(rng, WATER), g.pick(rng, WATER)
    img = g.mix(np.broadcast_to(shallow * 1.2, (size, size, 3)), deep, depth)
    u, _ = _frame(rng, size, warp=0.05)
    ripple = 1.0 + 0.04 * _stripes(u, np.full_like(u, rng.uniform(15, 40)), size)
    return img * ripple[..., None] * g.grain(rng, size, 0.03)


def river(rng, size):
    """A meandering river with a wooded band along its banks, across fields or meadow."""
    u, v = _frame(rng, size, warp=0.0)
    bend = rng.uniform(0.03, 0.2) * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * u + rng.uniform(0, 6.3))
    centre = bend + 0.08 * fbm(rng, size, 1.5, 2)[0] + rng.uniform(-0.2, 0.2)
    d = np.abs(v - centre)
    width = rng.uniform(0.02, 0.08)
    img = cropland(rng, size) if rng.random() < 0.5 else _land(rng, size)
    woods = soft(width * rng.uniform(1.5, 3.5) - d + 0.02 * noise(rng, size, 12)[0], 0.0, 1.0 / size)
    img = g.mix(img, g.canopy(rng, size, 0.035, rng.uniform(0, 6.3)), woods)
    return g.mix(img, _water(rng, size, np.clip(1.0 - d / width, 0, 1)), soft(width - d, 0.0, 1.0 / size))


def highway(rng, size):
    """One or two roads (some divided, with lane marks and cars) crossing open country."""
    img = cropland(rng, size) if rng.random() < 0.4 else _land(rng, size)
    for _ in range(rng.integers(1, 3)):
        img = _road(rng, size, img)
    return img


def _road(rng, size, img):
    """A straight road, single or dual carriageway, with shoulders, a dashed centre line, cars."""
    u, v = _frame(rng, size)
    d = v - rng.uniform(-0.3, 0.3)
    half = rng.uniform(0.01, 0.03)
    lanes = np.abs(np.abs(d) - half * 1.6) if rng.random() < 0.5 else np.abs(d)
    tarmac = _band(lanes, 2.0 * half, size)
    shoulder = np.clip(_band(lanes, 3.4 * half, size) - tarmac, 0.0, 1.0)
    img = g.mix(img, g.pick(rng, g.SOIL) * 1.15, shoulder)
    img = g.mix(img, g.pick(rng, ASPHALT), tarmac)
    dashes = _band(lanes, 0.004, size) * (np.sin(2 * np.pi * u * rng.uniform(15, 30)) > 0)
    img = g.mix(img, np.array([0.9, 0.9, 0.85], F32), dashes * tarmac)
    cars = (_stripes(u, np.full_like(u, rng.uniform(8, 20)), size * 4) > 0.93) * tarmac
    return g.mix(img, g.pick(rng, ROOF, 0.3), cars * _band(np.abs(lanes - half * 0.45), half * 0.6, size))


def residential(rng, size):
    """Street grid; rows of pitched-roof houses with shadows, lawns and garden trees."""
    u, v = _frame(rng, size, warp=rng.choice([0.0, 0.025]))
    bu, bv = rng.uniform(0.25, 0.5), rng.uniform(0.16, 0.28)
    a, fa = _cells(u, bu, rng)
    b, fb = _cells(v, bv, rng)
    street = rng.uniform(0.012, 0.025)
    road = soft(street - np.minimum(fa * bu, fb * bv), 0.0, 1.0 / size)
    lot = rng.uniform(0.05, 0.1)
    li, lf = _cells(fa * bu, lot, rng)
    row = (fb > 0.5).astype(np.int64)
    depth = np.where(row == 1, (1.0 - fb) * bv, fb * bv) - street
    house = soft(lot * rng.uniform(0.3, 0.4) - np.abs(lf - 0.5) * lot, 0, 1.0 / size)
    house *= soft(depth, rng.uniform(0.008, 0.02), 1.0 / size)
    house *= soft(rng.uniform(0.04, 0.07) - depth, 0, 1.0 / size)
    key = hash_index(a, b, li, row, mod=64)
    house *= (rng.random(64) < 0.88)[key]
    ridge = np.where(lf > 0.5, 1.12, 0.85)[..., None]  # two roof planes, one facing the sun
    img = g.mix(_land(rng, size), g.pick(rng, g.GRASS), rng.uniform(0.0, 0.5) * np.ones_like(u))
    img = _shadow(rng, size, img, house)
    img = g.mix(img, _palette(rng, ROOF, 64, 0.08)[key] * ridge, house)
    img = g.mix(img, g.pick(rng, ASPHALT), road)
    trees = g.tree_mask(rng, size, rng.uniform(0.05, 0.35), rng.uniform(0.025, 0.05))
    return g.mix(_shadow(rng, size, img, trees), g.canopy(rng, size, 0.035, rng.uniform(0, 6.3)), trees)


def _shadow(rng, size, img, mask):
    """Darken the ground beside raised objects, away from a random sun, by 1-2 px."""
    r = max(1, int(round(size / 48)))
    dy, dx = rng.integers(-r, r + 1, 2)
    cast = np.clip(shift(mask, int(dy), int(dx)) - mask, 0.0, 1.0)
    return img * (1.0 - 0.55 * cast[..., None])


def industrial(rng, size):
    """Large flat roofs, paved yards with parked trucks, storage tanks, service roads."""
    u, v = _frame(rng, size)
    bu, bv = rng.uniform(0.25, 0.55, 2)
    a, fa = _cells(u, bu, rng)
    b, fb = _cells(v, bv, rng)
    edge = np.minimum(_edge_dist(fa, bu), _edge_dist(fb, bv))
    kind = rng.integers(0, 4, 64)[hash_index(a, b, mod=64)]
    margin = rng.uniform(0.02, 0.06)
    roofs = _palette(rng, ROOF[2:] + [(0.7, 0.72, 0.74), (0.4, 0.5, 0.6)], 64, 0.1)
    building = soft(edge, margin, 1.0 / size) * (kind < 2)
    panels = 1.0 + 0.05 * _stripes(u, np.full_like(u, rng.uniform(20, 50)), size)
    img = g.mix(g.soil(rng, size), g.pick(rng, ASPHALT) * g.grain(rng, size, 0.05), soft(edge, 0.01, 1.0 / size))
    img = _parking(rng, size, img, u, v, (kind == 2) * soft(edge, margin, 1.0 / size))
    img = _tanks(rng, size, img, fa * bu, fb * bv, kind == 3)
    img = _shadow(rng, size, img, building)
    return g.mix(img, roofs[hash_index(a, b, mod=64)] * panels[..., None], building)


def _parking(rng, size, img, u, v, lot):
    """Rows of parked vehicles (bright dots) on a paved lot."""
    rows = _stripes(v, np.full_like(v, rng.uniform(12, 30)), size) > 0.3
    slots = _stripes(u, np.full_like(u, rng.uniform(25, 60)), size * 3) > 0.0
    parked = rows * slots * (noise(rng, size, size / 3)[0] > 0) * lot
    return g.mix(img, g.pick(rng, ROOF, 0.4), parked)


def _tanks(rng, size, img, x, y, where):
    """Round storage tanks on a square pitch inside the selected lots."""
    pitch = rng.uniform(0.05, 0.1)
    dx, dy = np.mod(x, pitch) - pitch / 2, np.mod(y, pitch) - pitch / 2
    r = np.sqrt(dx * dx + dy * dy)
    tank = soft(pitch * 0.38 - r, 0.0, 1.0 / size) * where
    lit = (1.0 + 0.25 * (dx - dy) / pitch)[..., None]
    return g.mix(_shadow(rng, size, img, tank), g.pick(rng, [(0.85, 0.85, 0.82), (0.6, 0.62, 0.6)]) * lit, tank)


def beach(rng, size):
    """Land, a sand strip and the sea, with surf lines parallel to a wavy shore."""
    u, v = _frame(rng, size)
    s = v - rng.uniform(-0.25, 0.25) - 0.06 * fbm(rng, size, rng.uniform(1.0, 2.5), 3)[0]
    sand_w = rng.uniform(0.08, 0.3)
    sand = g.pick(rng, SAND) * g.grain(rng, size, 0.06)
    img = g.mix(_land(rng, size), sand, soft(s, -sand_w, 0.02))
    img = g.mix(img, sand * 0.8, soft(s, -0.02, 0.02))  # wet sand
    sea = _water(rng, size, np.clip(s / rng.uniform(0.2, 0.6), 0, 1))
    spacing = rng.uniform(0.03, 0.07)
    phase = s / spacing + 0.3 * noise(rng, size, 10)[0]
    foam = np.exp(-s / (spacing * 3)) * _lines(phase * spacing, spacing, rng.uniform(0.006, 0.015), size)
    sea = g.mix(sea, np.array([0.92, 0.93, 0.92], F32), np.clip(foam, 0, 1))
    return g.mix(img, sea, soft(s, 0.0, 1.0 / size))


def dunes(rng, size):
    """Sand seas: asymmetric transverse ridges (gentle windward, steep lee slope), hill-shaded."""
    u, v = _frame(rng, size, warp=rng.uniform(0.01, 0.06))
    wave = rng.uniform(0.07, 0.2)
    t = np.mod(u / wave, 1.0)
    crest = rng.uniform(0.6, 0.85)
    h = np.where(t < crest, t / crest, (1.0 - t) / (1.0 - crest))
    h = h * (0.6 + 0.4 * fbm(rng, size, 2.0, 2)[0]) * wave
    light = hillshade(h * size, rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.5))
    sand = g.pick(rng, SAND, 0.06) * g.grain(rng, size, 0.04)
    ripples = 1.0 + 0.04 * _stripes(u, np.full_like(u, rng.uniform(40, 90)), size)
    return sand * np.clip(light * ripples, 0.45, 1.3)[..., None]


def snow(rng, size):
    """Snowfield or glacier: hill-shaded snow with bluish shadows, rock outcrops, crevasses."""
    h = fbm(rng, size, rng.uniform(1.5, 4.0), persistence=0.55, finest_px=6.0)[0]
    light = np.clip(hillshade(h * size / 8, rng.uniform(0, 2 * np.pi), 0.5), 0.4, 1.3)
    white = jitter(rng, (0.93, 0.95, 0.98), 0.04)
    shade = jitter(rng, (0.6, 0.68, 0.8), 0.06)
    img = g.mix(np.broadcast_to(shade, (size, size, 3)), white, np.clip((light - 0.4) / 0.8, 0, 1))
    outcrop = fbm(rng, size, rng.uniform(3.0, 7.0), 3)[0]
    rock = soft(outcrop, rng.uniform(1.0, 2.5), 0.2)
    img = g.mix(img, g.pick(rng, ROCK) * light[..., None] * g.grain(rng, size, 0.15), rock)
    if rng.random() < 0.4:
        u, _ = _frame(rng, size, warp=0.04)
        crack = _lines(u, rng.uniform(0.07, 0.2), rng.uniform(0.004, 0.015), size)
        img = img * (1.0 - 0.5 * crack[..., None])
    if rng.random() < 0.35:  # snowy woodland: dark conifers with shadows on the snow
        trees = g.tree_mask(rng, size, rng.uniform(0.05, 0.3), rng.uniform(0.015, 0.03))
        img = g.mix(_shadow(rng, size, img, trees), g.pick(rng, g.TREE[:2]) * 0.7, trees)
    return (img * rng.uniform(0.7, 1.0)).astype(F32)  # overcast or shaded slopes read grey


def meadow(rng, size):
    """Grassland or pasture: soft colour patches, tracks, a few isolated trees."""
    img = g.grass(rng, size)
    trees = g.tree_mask(rng, size, rng.uniform(0.0, 0.08), rng.uniform(0.02, 0.04))
    img = _shadow(rng, size, img, trees)
    img = g.mix(img, g.canopy(rng, size, 0.03, rng.uniform(0, 6.3)), trees)
    if rng.random() < 0.5:
        img = _soil_track(rng, size, img, 0.08, (0.006, 0.014))
    return img


def mountain(rng, size):
    """Bare ridged relief, rock and scree, vegetation in the valleys, sometimes snow on top."""
    r = 1.0 - np.abs(fbm(rng, size, rng.uniform(1.5, 3.5), persistence=0.55, finest_px=6.0)[0])
    h = r * r
    light = np.clip(hillshade(h * size / 6, rng.uniform(0, 2 * np.pi), 0.35), 0.45, 1.4)
    rock = g.pick(rng, ROCK) * g.grain(rng, size, 0.15)
    low = np.quantile(h, rng.uniform(0.1, 0.5)) - h + 0.15 * fbm(rng, size, 8.0, 2)[0]
    img = g.mix(rock, g.canopy(rng, size, 0.03, rng.uniform(0, 6.3)), soft(low, 0.0, 0.08))
    if rng.random() < 0.3:
        img = g.mix(img, np.array([0.92, 0.93, 0.96], F32), soft(h, np.quantile(h, 0.85), 0.05))
    return (img * light[..., None]).astype(F32)


SCENES = {
    "cropland": cropland, "circular_farmland": circular_farmland, "forest": forest, "lake": lake, "river": river, "highway": highway,
    "residential": residential, "industrial": industrial, "beach": beach, "dunes": dunes,
    "snow": snow, "meadow": meadow, "mountain": mountain,
}
