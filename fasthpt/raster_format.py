"""The bytes of one raster sample: the dtype codes and the FFCV record, shared by `fasthpt prep`
(the writer, dataprep) and every loader. The storage contract as a whole (which datasets are
rasters, the WebDataset member, the manifest fields, the scaling) is dataprep/rasters.py's
docstring; this module holds only what both sides must compute identically.

FFCV record (field "image", an ffcv BytesField), one per sample::

    bytes  0..15  four little-endian uint32: height, width, bands, dtype_code
    bytes 16..    the H x W x C array, C order (row, column, band), little-endian values

WebDataset member ``<key>.npy``: ``np.save`` of the same C-contiguous H x W x C little-endian array
(C = 1 for one band: always three axes).
"""

from __future__ import annotations

import io
import struct

import numpy as np

# dtype_code -> numpy dtype name; the codes are part of the file format: never renumber them.
UINT8, UINT16, INT16, FLOAT32 = 1, 2, 3, 4
DTYPES = {UINT8: "uint8", UINT16: "uint16", INT16: "int16", FLOAT32: "float32"}
CODES = {name: code for code, name in DTYPES.items()}
HEADER = struct.Struct("<4I")  # height, width, bands, dtype_code
HEADER_BYTES = HEADER.size  # 16


def stored_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a stored dtype name ('uint16' -> '<u2')."""
    if name not in CODES:
        raise ValueError(f"dtype {name!r} is not a stored raster dtype ({', '.join(CODES)})")
    return np.dtype(name).newbyteorder("<")


def _checked(array: np.ndarray) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"a raster sample is H x W x C, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=stored_dtype(array.dtype.name))


def pack(array: np.ndarray) -> bytes:
    """The FFCV record of an H x W x C array (header + raw little-endian C-order values)."""
    array = _checked(array)
    h, w, c = array.shape
    return HEADER.pack(h, w, c, CODES[array.dtype.name]) + array.tobytes()


def unpack(record) -> np.ndarray:
    """The H x W x C array of an FFCV record (bytes or a uint8 array; trailing padding, as FFCV's
    BytesDecoder leaves in a batch, is ignored). A record that cannot be one raises ValueError."""
    buf = np.frombuffer(record, np.uint8) if isinstance(record, (bytes, bytearray)) else np.asarray(record).ravel()
    if buf.dtype != np.uint8 or len(buf) < HEADER_BYTES:
        raise ValueError(f"raster record of {len(buf)} bytes: not a {HEADER_BYTES}-byte header and its array")
    h, w, c, code = HEADER.unpack(buf[:HEADER_BYTES].tobytes())
    if code not in DTYPES:
        raise ValueError(f"raster record with unknown dtype code {code}")
    dtype = stored_dtype(DTYPES[code])
    size = h * w * c * dtype.itemsize
    if len(buf) < HEADER_BYTES + size:
        raise ValueError(f"raster record of {len(buf)} bytes is too short for {h} x {w} x {c} {dtype.name}")
    return buf[HEADER_BYTES : HEADER_BYTES + size].view(dtype).reshape(h, w, c)


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``<key>.npy`` member of an H x W x C array."""
    buf = io.BytesIO()
    np.save(buf, _checked(array), allow_pickle=False)
    return buf.getvalue()


def npy_array(data: bytes) -> np.ndarray:
    """The H x W x C array of a ``<key>.npy`` member (never unpickles anything)."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.ndim != 3 or array.dtype.name not in CODES:
        raise ValueError(f".npy sample of shape {array.shape} and dtype {array.dtype}: not H x W x C of "
                         f"{', '.join(CODES)}")
    return array
