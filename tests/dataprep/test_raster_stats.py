"""Per-band statistics of a raster dataset, streamed file by file, against numpy on all pixels."""

from __future__ import annotations

import numpy as np
import pytest

from dataprep import raster_stats
from dataprep.raster_read import Kind, Raster
from dataprep.raster_stats import RasterStats
from dataprep.rasters import Layout, store_raster


def _stream(arrays, dtype):
    layout = Layout(Kind(arrays[0].shape[2], dtype))
    stats = RasterStats(layout)
    for a in arrays:
        stats.add(store_raster(Raster(a), layout, max_res=0))
    return stats


@pytest.mark.parametrize("dtype, low, high", [("uint16", 0, 4096), ("int16", -3000, 3000), ("uint8", 0, 256)])
def test_integer_statistics_are_exact(dtype, low, high):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(low, high, (h, w, 5)).astype(dtype) for h, w in [(3, 4), (17, 9), (1, 1), (30, 31)]]
    arrays[1][..., 2] += 7  # bands differ
    fields = _stream(arrays, dtype).fields()
    px = np.concatenate([a.reshape(-1, 5) for a in arrays])
    assert fields["mean"] == pytest.approx(px.astype(np.float64).mean(0).tolist(), rel=1e-12)
    assert fields["std"] == pytest.approx(px.astype(np.float64).std(0).tolist(), rel=1e-12)
    assert fields["value_range"] == np.stack([px.min(0), px.max(0)], 1).tolist()
    assert fields["percentiles"] == np.percentile(px, (0.1, 99.9), axis=0, method="inverted_cdf").T.tolist()


def test_float_percentiles_come_from_a_bounded_uniform_sample(monkeypatch):
    monkeypatch.setattr(raster_stats, "RESERVOIR_PIXELS", 4000)
    rng = np.random.default_rng(1)
    arrays = [rng.uniform(0, 1, (20, 20, 2)).astype(np.float32) for _ in range(60)]  # 24,000 pixels
    arrays[-1][..., 1] = 5.0  # the last file is not lost to a full sample
    stats = _stream(arrays, "float32")
    fields = stats.fields()
    assert stats.sample.shape == (4000, 2) and "sample of 4000 train pixels" in fields["statistics"]["percentiles"]
    assert (stats.sample[:, 1] == 5.0).sum() == pytest.approx(4000 * 400 / 24000, rel=0.3)
    assert fields["percentiles"][0] == pytest.approx([0.001, 0.999], abs=0.004)
    assert fields["value_range"][1][1] == 5.0 and fields["mean"][0] == pytest.approx(0.5, abs=0.01)


def test_a_constant_band_is_found():
    arrays = [np.dstack([np.full((4, 4), 9, np.uint16), np.arange(16, dtype=np.uint16).reshape(4, 4)])] * 2
    stats = _stream(arrays, "uint16")
    assert stats.constant_bands() == [0] and stats.fields()["std"][0] == 0.0
