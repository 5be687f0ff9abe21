"""Reading one file as it is: TIFF / GeoTIFF (tifffile), 16-bit PNG (OpenCV), .npy (numpy) -> an
H x W x C array of the file's own values and dtype; everything 8-bit RGB / gray / palette / RGBA
still goes to dataprep.convert.decode_bytes, untouched (the JPEG path: for a TIFF, Pillow's header
parse says whether it is such an image).

``decode(data)`` is what the file sources call: a ``convert.Decoded`` for an 8-bit image, else a
``Raster``. ``kind_of(data)`` says which of the two a file holds from its header alone (no pixel
decoded): the survey that picks a dataset's one (bands, dtype) reads it. What is done with a
Raster (one dtype and band count per dataset, storage, statistics) is dataprep/rasters.py's.

Readers: tifffile reads TIFF and GeoTIFF pixels of any dtype, band count and interleave, and the
GDAL band descriptions, without GDAL (a pure-Python wheel); its LZW, PackBits, JPEG and zstd
decoders come from imagecodecs (deflate and LZMA it decodes alone). rasterio would add CRS and
nodata semantics, which prep does not use, for a GDAL build in every install. Pillow reads 16-bit
grayscale but turns 16-bit colour PNGs into 8 bits, so every 16-bit PNG is read by OpenCV
(IMREAD_UNCHANGED, BGR order turned to RGB). Band layout comes from the files' metadata, never from
the shape: tifffile's series axes (``YXS`` interleaved, ``SYX`` band-sequential as GeoTIFFs often
are, ``QYX``/``IYX``/``CYX`` one band per page or channel), the PNG header's colour type; a .npy
array has no such metadata and is taken as H x W (x C) by definition.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from dataprep.convert import Decoded, SkipImage, decode_bytes

_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
# Decoded size above which a file is refused before its pixels are decoded: a small compressed
# file can declare a huge image (Pillow's decompression-bomb guard, for the readers it does not cover).
MAX_DECODED_BYTES = 1 << 30
# Stored dtype of each file dtype: kept when the storage contract has it, widened when that is
# lossless (int8 -> int16, float16 -> float32), float64 narrowed to float32 (said once by prep).
_STORED = {"uint8": "uint8", "uint16": "uint16", "int16": "int16", "float32": "float32",
           "int8": "int16", "float16": "float32", "float64": "float32"}
_BAND_AXES = set("SCIQ")  # tifffile: samples, channels, pages, unknown; Z (depth), T (time) are not bands
_GDAL_METADATA = 42112  # TIFF tag GDAL_METADATA (GDAL's GTiff driver): XML with band descriptions
_BITS_PER_SAMPLE, _SAMPLES_PER_PIXEL, _SAMPLE_FORMAT = 258, 277, 339  # TIFF 6.0; SampleFormat 1: unsigned
# Pillow modes of the 8-bit images the JPEG path reads
_PILLOW_MODES = {"1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB"}
_MAX_GDAL_XML = 1 << 20
_PILLOW_TIFF_LOG = "PIL.TiffImagePlugin"


@dataclass(frozen=True)
class Kind:
    """What a file holds, as stored: a dataset keeps one Kind. EIGHT_BIT is every 8-bit RGB /
    gray / palette / RGBA image (stored as RGB JPEG)."""

    bands: int
    dtype: str  # the stored dtype name

    @property
    def eight_bit(self) -> bool:
        return self == EIGHT_BIT

    def many(self) -> str:
        """'8-bit images', 'uint16 rasters of 13 bands'."""
        plural = "s" if self.bands != 1 else ""
        return "8-bit images" if self.eight_bit else f"{self.dtype} rasters of {self.bands} band{plural}"

    def one(self) -> str:
        """'an 8-bit image', 'a uint16 raster of 13 bands'."""
        return "an 8-bit image" if self.eight_bit else f"a {self.many().replace(' rasters ', ' raster ')}"


EIGHT_BIT = Kind(3, "uint8")


@dataclass(frozen=True)
class Header:
    """A file's Kind from its header, with what the survey also needs."""

    kind: Kind
    band_names: tuple[str, ...] | None = None
    source_dtype: str = "uint8"  # the file's own dtype (float64 is narrowed: prep says so)


@dataclass
class Raster:
    pixels: np.ndarray  # H x W x C, the file's values in its own dtype
    band_names: tuple[str, ...] | None = None

    @property
    def header(self) -> Header:
        return Header(_kind(self.pixels.dtype, self.pixels.shape[2]), self.band_names, self.pixels.dtype.name)


def _kind(dtype: np.dtype, bands: int) -> Kind:
    stored = _STORED.get(np.dtype(dtype).name)
    if stored is None:
        raise SkipImage(f"{np.dtype(dtype).name} values: prep stores uint8, uint16, int16 or float32 "
                        "(int8, float16 and float64 are converted); convert the files first")
    if stored == "uint8" and bands in (1, 3):
        return EIGHT_BIT
    return Kind(bands, stored)


def decode(data: bytes) -> Decoded | Raster:
    """The file's pixels: Decoded (8-bit, convert's path as before) or a Raster; SkipImage with
    the reason for a file that cannot be a sample."""
    if data[:4] in _TIFF_MAGIC:
        return _guard(_read_tiff, data)
    if data[:8] == _PNG_MAGIC and _png_header(data)[0] == 16:
        return _guard(_read_png16, data)
    if data[:6] == _NPY_MAGIC:
        return _guard(_read_npy, data)
    return decode_bytes(data)


def kind_of(data: bytes) -> Header | None:
    """The file's Header from its header bytes alone; None where it cannot be told (an unreadable
    file: the conversion pass says why)."""
    try:
        if data[:4] in _TIFF_MAGIC:
            return _tiff_header(data)
        if data[:8] == _PNG_MAGIC:
            depth, colour = _png_header(data)
            return Header(Kind(1 if colour in (0, 4) else 3, "uint16")) if depth == 16 else Header(EIGHT_BIT)
        if data[:6] == _NPY_MAGIC:
            shape, dtype = _npy_header(data)
            return Header(_kind(dtype, _npy_bands(shape)), source_dtype=np.dtype(dtype).name)
        return Header(EIGHT_BIT)  # JPEG, BMP, GIF, WebP, ...: Pillow's formats, 8 bits per channel
    except SkipImage:
        return None
    except Exception:  # a damaged header; its reason comes from decode() in the conversion pass
        return None


def as_image(pixels: np.ndarray, band_names=None) -> Decoded | Raster:
    """An in-memory array (a generator's, a .npy file's) as the file sources give it: 8-bit with
    1 or 3 bands -> Decoded RGB (the JPEG path), anything else -> Raster. H x W or H x W x C."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or 0 in pixels.shape:
        raise SkipImage(f"unusable image shape {pixels.shape}")
    if _kind(pixels.dtype, pixels.shape[2]).eight_bit:
        rgb = pixels if pixels.shape[2] == 3 else np.repeat(pixels, 3, axis=2)
        return Decoded(np.ascontiguousarray(rgb, dtype=np.uint8))
    return Raster(pixels, None if band_names is None else tuple(band_names))


def _guard(read, data: bytes):
    try:
        return read(data)
    except SkipImage:
        raise
    except Exception as exc:  # the readers raise many types on malformed files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SkipImage(f"cannot decode: {type(exc).__name__}: {first}") from None


# ---------------------------------------------------------------- TIFF

def _tiff_layout(tif) -> tuple[object, str, tuple[int, ...]]:
    """(series, axes without length-1 axes except Y and X, their shape); one image only."""
    series = tif.series[0]
    kept = [(a, n) for a, n in zip(series.axes, series.shape) if n != 1 or a in "YX"]
    axes = "".join(a for a, _ in kept)
    extra = _band_axis(axes)
    if len(axes) - len(extra) != 2 or len(extra) > 1 or (extra and extra not in _BAND_AXES):
        raise SkipImage(f"unsupported TIFF layout (axes {series.axes}, shape {tuple(series.shape)}): prep "
                        "reads one Y x X image with at most one band axis (samples, channels or pages)")
    return series, axes, tuple(n for _, n in kept)


def _band_axis(axes: str) -> str:
    """The band axis of a laid-out series ('' for a one-band Y x X image)."""
    return axes.replace("Y", "").replace("X", "")


def _tiff_header(data: bytes) -> Header:
    import tifffile

    if _pillow_tiff(data):
        return Header(EIGHT_BIT)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series, axes, shape = _tiff_layout(tif)
        bands = shape[axes.index(_band_axis(axes))] if _band_axis(axes) else 1
        return Header(_kind(series.dtype, bands), _gdal_band_names(tif.pages[0], bands), np.dtype(series.dtype).name)


def _pillow_tiff(data: bytes) -> bool:
    """Whether the TIFF is an 8-bit image that Pillow reads, as the JPEG path always has (RGB,
    gray, palette, bilevel, CMYK / YCbCr, with alpha or not), from Pillow's header parse alone
    (a tenth of tifffile's). Pillow also opens 16-bit RGB as 8-bit "RGB", and RGB + a data sample
    (an RGB + NIR tile) as "RGB" without it: bits and samples per pixel tell those apart."""
    try:
        with warnings.catch_warnings(), _quiet(_PILLOW_TIFF_LOG):
            warnings.simplefilter("ignore")  # a damaged header: tifffile (or decode_bytes) says why
            with Image.open(io.BytesIO(data)) as img:
                tags = img.tag_v2
                bits, kind = _tuple(tags.get(_BITS_PER_SAMPLE, 1)), _tuple(tags.get(_SAMPLE_FORMAT, 1))
                return (img.mode in _PILLOW_MODES and len(img.getbands()) == tags.get(_SAMPLES_PER_PIXEL, 1)
                        and all(b <= 8 for b in bits) and all(k == 1 for k in kind))
    except Exception:  # Pillow cannot read it (N bands, a codec it lacks): tifffile's to read
        return False


@contextmanager
def _quiet(name: str):
    """The logger ``name`` says nothing in this block: Pillow logs an ERROR ("More samples per pixel
    than can be decoded: 13") for every N-band TIFF it is asked to open, which here is a probe."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _read_tiff(data: bytes) -> Decoded | Raster:
    import tifffile

    if _pillow_tiff(data):
        return decode_bytes(data)  # exactly the JPEG path's reading of an 8-bit TIFF
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series, axes, shape = _tiff_layout(tif)
        extra = _band_axis(axes)
        bands = shape[axes.index(extra)] if extra else 1
        _check_size(shape, series.dtype)
        names = _gdal_band_names(tif.pages[0], bands)
        pixels = series.asarray().reshape(shape)
    order = [axes.index("Y"), axes.index("X")] + ([axes.index(extra)] if extra else [])
    pixels = pixels.transpose(order)
    return as_image(pixels if pixels.ndim == 3 else pixels[:, :, None], names)


def _check_size(shape, dtype) -> None:
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if size > MAX_DECODED_BYTES:
        raise SkipImage(f"image of {' x '.join(map(str, shape))} {np.dtype(dtype).name} values ({size >> 20} MiB) "
                        f"is larger than prep decodes ({MAX_DECODED_BYTES >> 20} MiB); tile it first")


def _gdal_band_names(page, bands: int) -> tuple[str, ...] | None:
    """Band descriptions from GDAL's metadata tag (<Item name="DESCRIPTION" sample="i"
    role="description">B04</Item>), when every band has one."""
    tag = page.tags.get(_GDAL_METADATA)
    text = getattr(tag, "value", None)
    if not isinstance(text, str) or len(text) > _MAX_GDAL_XML:
        return None
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    names = {}
    for item in root.iter("Item"):
        sample, role = item.get("sample"), item.get("role")
        if role == "description" and sample is not None and sample.isdigit() and (item.text or "").strip():
            names[int(sample)] = item.text.strip()
    if sorted(names) != list(range(bands)):
        return None
    return tuple(names[i] for i in range(bands))


# ---------------------------------------------------------------- PNG and .npy

def _png_header(data: bytes) -> tuple[int, int]:
    """(bit depth, colour type) from the IHDR chunk, which the PNG standard puts first."""
    if len(data) < 26 or data[12:16] != b"IHDR":
        return 0, 0
    return data[24], data[25]


def _read_png16(data: bytes) -> Raster:
    width, height = struct.unpack(">II", data[16:24])
    _check_size((height, width, 4), np.uint16)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise SkipImage("cannot decode: a damaged 16-bit PNG")
    _, colour = _png_header(data)
    if colour in (0, 4):  # gray, gray + alpha (OpenCV gives the gray three times, then alpha)
        pixels = pixels if pixels.ndim == 2 else pixels[:, :, 0]
    else:  # RGB, RGB + alpha: OpenCV's BGR(A) -> RGB; alpha is dropped, as the JPEG path drops it
        pixels = pixels[:, :, 2::-1]
    return as_image(np.ascontiguousarray(pixels))


def _npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    buf = io.BytesIO(data)
    fmt = np.lib.format
    read = fmt.read_array_header_1_0 if fmt.read_magic(buf) == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(buf)
    return shape, dtype


def _npy_bands(shape: tuple[int, ...]) -> int:
    if len(shape) not in (2, 3):
        raise SkipImage(f".npy array of shape {shape}: prep reads H x W or H x W x C (bands last)")
    return 1 if len(shape) == 2 else shape[2]


def _read_npy(data: bytes) -> Decoded | Raster:
    shape, dtype = _npy_header(data)
    _kind(dtype, _npy_bands(shape))  # a dtype prep cannot store is refused before loading
    _check_size(shape, dtype)
    return as_image(np.load(io.BytesIO(data), allow_pickle=False))
