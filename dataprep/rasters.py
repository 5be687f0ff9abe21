"""How `fasthpt prep` stores rasters: the contract between prep and every loader (ffcv, dali, torch),
evaluation, embed and export. (The byte layouts and dtype codes are fasthpt/raster_format.py's, the
one module both sides import; the manifest's schema is fasthpt/manifest.py's.)

Which datasets. A dataset whose files are 8-bit RGB, gray, palette or RGBA images is stored as
before: RGB JPEG (WebDataset ``<key>.jpg``, FFCV ``RGBImageField``), untouched by what follows.
Any other dataset is a *raster* dataset: integer values wider than 8 bits (uint16, int16; 12-bit
data arrives as uint16 and is stored unchanged), floating point (float32; float64 is stored as
float32, said once; int8 and float16 are widened losslessly to int16 and float32), or a band count
other than 1 or 3. One dataset has ONE dtype and ONE band count: the most common (bands, dtype)
among its files (read from their headers before anything is converted) wins, and every file that
disagrees is skipped and listed with the reason, as any unusable file is. Values are stored exactly
as the files hold them: no per-file rescaling and no scaling at all in storage. A float file with
NaN or infinite values is skipped (the network cannot take them). Files larger than --max-res are
shrunk as JPEG images are (cv2.INTER_AREA, every band alike: an area average, integers rounded).

Per sample (H x W x C, C = bands, also C = 1; C order; little-endian):
- WebDataset shards: ``<key>.npy`` = the bytes of ``np.save`` of the array in the dataset's dtype,
  and ``<key>.cls`` (ASCII label) as for JPEG datasets. Each shard's DALI index lists the ``npy``
  and ``cls`` members (dataprep.writers).
- FFCV .beton: field "image" is an ``ffcv.fields.BytesField``; each sample's bytes are a 16-byte
  header of four little-endian uint32 [height, width, bands, dtype_code] followed by the raw
  array bytes; dtype_code 1 uint8, 2 uint16, 3 int16, 4 float32 (fasthpt.raster_format.pack /
  unpack). Field "label" is an IntField, as for JPEG datasets.

Manifest fields (fasthpt.manifest, schema 4), written for every dataset:
- ``image_format``: "jpeg" | "raster"; ``bands`` (3 for JPEG datasets); ``dtype`` (the stored numpy
  dtype name; "uint8" for JPEG datasets); ``band_names``: one name per band or null, from the files
  (GDAL band descriptions in GeoTIFFs; the most common set among the files) or --band-names
  (JPEG datasets: red, green, blue).
- ``mean``, ``std``: per band over every stored pixel of the train split, in stored units
  (population std; JPEG datasets: 0..255, exactly as before). Rasters: exact float64 moments per
  file, combined over files with Chan et al.'s pairwise update.
- ``value_range``: [min, max] per band over the train split; ``percentiles``: [p0.1, p99.9] per
  band over the train split (inverted CDF: the smallest stored value with at least 0.1% / 99.9% of
  the pixels at or below it), from an exact per-band histogram for integer dtypes, from a uniform
  reservoir sample of RESERVOIR_PIXELS train pixels for float32 (``statistics`` in the manifest
  says which). Both null for JPEG datasets.
- ``scaling``: what every loader does with stored values, and nothing else:
  "standardise per band: (x - mean[c]) / std[c]" (fasthpt.manifest.SCALING).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dataprep.convert import SkipImage, resize_to_max
from dataprep.raster_read import EIGHT_BIT, Header, Kind, Raster
from fasthpt.errors import UserError
from fasthpt.raster_format import npy_bytes, stored_dtype

RGB_NAMES = ("red", "green", "blue")  # the band names of a JPEG dataset
_CV_BANDS = 4  # OpenCV resizes up to 4 channels in one call on every build


@dataclass(frozen=True)
class Layout:
    """What a dataset stores: its one Kind (EIGHT_BIT: the JPEG path) and its band names."""

    kind: Kind = EIGHT_BIT
    band_names: tuple[str, ...] | None = None

    @property
    def raster(self) -> bool:
        return not self.kind.eight_bit

    def refuse(self, kind: Kind) -> None:
        """SkipImage for a file of another Kind than the dataset's."""
        if kind != self.kind:
            raise SkipImage(f"{kind.one()}: the dataset holds {self.kind.many()} "
                            "(the most common kind among its files)")

    def manifest_fields(self) -> dict:
        names = self.band_names if self.raster else RGB_NAMES
        return {"image_format": "raster" if self.raster else "jpeg", "bands": self.kind.bands,
                "dtype": self.kind.dtype, "band_names": None if names is None else list(names)}


def choose_layout(headers: list[Header | None], band_names=None) -> Layout:
    """The dataset's Layout from its files' headers (None: unreadable, left to the conversion
    pass): the most common Kind (ties: the one met first), and band names from --band-names or
    the most common set among the files of that Kind. Prints what it decided when files differ."""
    counts = Counter(h.kind for h in headers if h is not None)
    kind, _ = counts.most_common(1)[0] if counts else (EIGHT_BIT, 0)
    winners = [h for h in headers if h is not None and h.kind == kind]
    if len(counts) > 1:
        found = "; ".join(f"{k.many()}: {c}" for k, c in counts.most_common())
        _note(f"the files hold {len(counts)} kinds of images ({found}): keeping {kind.many()}, the most common; "
              f"the other {sum(counts.values()) - len(winners)} files are skipped (listed below and in manifest.json)")
    narrowed = sum(h.source_dtype == "float64" for h in winners)
    if narrowed:
        _note(f"{narrowed} float64 files are stored as float32 (the loaders' precision)")
    return Layout(kind, _band_names(kind, winners, band_names))


def _band_names(kind: Kind, winners: list[Header], given) -> tuple[str, ...] | None:
    if given is not None:
        if kind.eight_bit:
            raise UserError("--band-names names the bands of rasters; these files are 8-bit images "
                            "(stored as RGB JPEG: red, green, blue)")
        if len(given) != kind.bands:
            raise UserError(f"--band-names gives {len(given)} names for {kind.bands} bands: "
                            f"{', '.join(given) or 'none'}")
        return tuple(given)
    sets = Counter(h.band_names for h in winners if h.band_names is not None)
    if not sets:
        return None
    names = sets.most_common(1)[0][0]
    if len(sets) > 1:
        _note(f"band names differ between files ({len(sets)} sets); the manifest keeps the most common: "
              f"{', '.join(names)}")
    return names


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


@dataclass
class StoredRaster:
    """One raster sample as stored (the .npy bytes), with the per-file statistics the parent
    combines: float64 moments and range per band, and the histogram entries of integer values."""

    npy: bytes
    height: int
    width: int
    count: int  # pixels
    mean: np.ndarray  # per band, float64
    m2: np.ndarray  # per band: sum of squared deviations from `mean`
    low: np.ndarray
    high: np.ndarray
    levels: np.ndarray | None  # integer dtypes: flat (band, value) histogram indices present...
    level_counts: np.ndarray | None  # ... and how many pixels hold each
    passthrough: bool = False


def store_raster(raster: Raster, layout: Layout, max_res: int | None) -> StoredRaster:
    """Check the file against the dataset, convert to its dtype, shrink to max_res, encode."""
    layout.refuse(raster.header.kind)
    dtype = stored_dtype(layout.kind.dtype)
    pixels = check_finite(raster.pixels.astype(dtype, copy=False), "prep stores")
    pixels = _resize(pixels, max_res)
    h, w, c = pixels.shape
    flat = pixels.reshape(-1, c)
    values = flat.astype(np.float64)
    mean = values.mean(0)
    m2 = ((values - mean) ** 2).sum(0)
    levels = counts = None
    if pixels.dtype.kind in "ui":
        levels, counts = np.unique(histogram_index(flat), return_counts=True)
    return StoredRaster(npy_bytes(pixels), h, w, h * w, mean, m2, flat.min(0), flat.max(0), levels, counts)


def check_finite(pixels: np.ndarray, who: str) -> np.ndarray:
    """``pixels``, or SkipImage for float values that are NaN or infinite (the network cannot take
    them); ``who`` says what needs them finite ("prep stores")."""
    if pixels.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(pixels)))
        if bad:
            raise SkipImage(f"{bad} NaN or infinite values: {who} finite values only (fill or mask them in the "
                            "files first)")
    return pixels


def histogram_index(flat: np.ndarray) -> np.ndarray:
    """Index of each (pixel, band) value in a flat bands x levels histogram of an integer dtype."""
    info = np.iinfo(flat.dtype)
    levels = int(info.max) - int(info.min) + 1
    return (flat.astype(np.int64) - int(info.min) + np.arange(flat.shape[1], dtype=np.int64) * levels).ravel()


def _resize(pixels: np.ndarray, max_res: int | None) -> np.ndarray:
    """convert.resize_to_max on every band (in groups OpenCV takes); H x W x C kept for C = 1."""
    if not max_res or max(pixels.shape[:2]) <= max_res:
        return np.ascontiguousarray(pixels)
    groups = [resize_to_max(np.ascontiguousarray(pixels[:, :, i : i + _CV_BANDS]), max_res)
              for i in range(0, pixels.shape[2], _CV_BANDS)]
    return np.ascontiguousarray(np.concatenate([g.reshape(*g.shape[:2], -1) for g in groups], axis=2))
