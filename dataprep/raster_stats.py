"""Per-band statistics of a raster dataset's train split, streamed one stored file at a time:
mean/std (Chan et al.'s pairwise combination of exact per-file float64 moments), the value range,
and the p0.1 / p99.9 percentiles (an exact histogram for integer dtypes, a uniform reservoir
sample of pixels for float32). The fields and their meaning: dataprep/rasters.py.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from dataprep.rasters import Layout, StoredRaster
from fasthpt.raster_format import npy_array, stored_dtype

PERCENTILES = (0.1, 99.9)
RESERVOIR_PIXELS = 1 << 18  # float32: 262,144 pixels (all bands of each): ~0.2% rank error at p0.1
_RESERVOIR_SEED = 0  # the same sample, hence the same manifest, on every run


class RasterStats:
    def __init__(self, layout: Layout):
        bands = layout.kind.bands
        self.dtype = stored_dtype(layout.kind.dtype)
        self.count = 0
        self.mean = np.zeros(bands)
        self.m2 = np.zeros(bands)
        self.low = self.high = None
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            self.hist = np.zeros((bands, int(info.max) - int(info.min) + 1), np.int64)
        else:
            self.sample = np.empty((RESERVOIR_PIXELS, bands), self.dtype)
            self.rng = np.random.default_rng(_RESERVOIR_SEED)

    def add(self, stored: StoredRaster) -> None:
        n, total = stored.count, self.count + stored.count
        delta = stored.mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + stored.m2 + delta**2 * (self.count * n / total)
        self.low = stored.low if self.low is None else np.minimum(self.low, stored.low)
        self.high = stored.high if self.high is None else np.maximum(self.high, stored.high)
        if stored.levels is not None:
            self.hist.ravel()[stored.levels] += stored.level_counts  # levels are unique: no lost add
        else:
            self._sample(npy_array(stored.npy).reshape(n, -1))
        self.count = total

    def _sample(self, pixels: np.ndarray) -> None:
        """Reservoir sampling (Vitter's algorithm R), vectorised over one file's pixels in order."""
        cap, seen = len(self.sample), self.count
        fill = max(0, min(cap - seen, len(pixels)))
        self.sample[seen : seen + fill] = pixels[:fill]
        rest = pixels[fill:]
        if len(rest):
            slots = self.rng.integers(0, np.arange(seen + fill, seen + len(pixels)) + 1)
            keep = slots < cap
            slots, rest = slots[keep][::-1], rest[keep][::-1]
            # a slot drawn twice keeps the later pixel, as the sequential algorithm would
            slots, last = np.unique(slots, return_index=True)
            self.sample[slots] = rest[last]

    def constant_bands(self) -> list[int]:
        """Bands with one value over the whole train split: std 0, nothing to standardise by."""
        return [c for c in range(len(self.m2)) if self.low[c] == self.high[c]]

    def fields(self) -> dict:
        """The manifest's statistics of the train split (fields described in dataprep/rasters.py)."""
        if self.dtype.kind in "ui":
            offset = int(np.iinfo(self.dtype).min)
            pct = [[_rank_value(h, p) + offset for p in PERCENTILES] for h in self.hist]
            how = "an exact per-band histogram of every train pixel"
        else:
            kept = self.sample[: min(self.count, len(self.sample))]
            pct = np.percentile(kept, PERCENTILES, axis=0, method="inverted_cdf").T.tolist()
            how = f"a uniform reservoir sample of {len(kept)} train pixels (seeded)"
        as_value = int if self.dtype.kind in "ui" else float
        return {
            "mean": self.mean.tolist(),
            "std": np.sqrt(self.m2 / self.count).tolist(),
            "value_range": [[as_value(lo), as_value(hi)] for lo, hi in zip(self.low, self.high)],
            "percentiles": [[as_value(lo), as_value(hi)] for lo, hi in pct],
            "statistics": {"over": "every stored pixel of the train split",
                           "std": "population standard deviation",
                           "percentiles": f"p{PERCENTILES[0]:g} and p{PERCENTILES[1]:g} per band, inverted CDF, "
                                          f"from {how}"},
        }


def _rank_value(hist: np.ndarray, percent: float) -> int:
    """Inverted CDF: the smallest level with at least `percent`% of the pixels at or below it."""
    cumulative = np.cumsum(hist)
    need = max(1, math.ceil(int(cumulative[-1]) * Fraction(str(percent)) / 100))  # exact: no 999.0000001
    return int(np.searchsorted(cumulative, need))
