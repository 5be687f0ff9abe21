"""fasthpt.raster_format: the bytes of a raster sample, as prep writes them and loaders read them."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from fasthpt import raster_format as rf


def test_dtype_codes_are_the_file_formats():
    assert (rf.UINT8, rf.UINT16, rf.INT16, rf.FLOAT32) == (1, 2, 3, 4)
    assert rf.DTYPES == {1: "uint8", 2: "uint16", 3: "int16", 4: "float32"} and rf.HEADER_BYTES == 16


@pytest.mark.parametrize("dtype, code", [(np.uint8, 1), (np.uint16, 2), (np.int16, 3), (np.float32, 4)])
def test_record_is_a_little_endian_header_then_the_c_order_array(dtype, code):
    array = (np.arange(5 * 7 * 13) - 40).reshape(5, 7, 13).astype(dtype)
    record = rf.pack(array)
    assert record[:16] == struct.pack("<IIII", 5, 7, 13, code)
    assert record[16:] == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes(order="C")
    back = rf.unpack(record)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)
    padded = np.frombuffer(record + bytes(9), np.uint8)  # FFCV pads records to the batch's longest
    assert np.array_equal(rf.unpack(padded), array)


def test_big_endian_input_is_stored_little_endian_and_one_band_keeps_three_axes():
    big = np.arange(6, dtype=">u2").reshape(2, 3, 1)
    assert rf.pack(big)[16:18] == b"\x00\x00" and rf.pack(big)[18:20] == b"\x01\x00"
    assert rf.npy_array(rf.npy_bytes(big)).shape == (2, 3, 1)
    with pytest.raises(ValueError, match="H x W x C"):
        rf.pack(np.zeros((2, 3), np.uint16))
    with pytest.raises(ValueError, match="not a stored raster dtype"):
        rf.pack(np.zeros((2, 3, 1), np.float64))


def test_bad_records_and_members_are_refused():
    with pytest.raises(ValueError, match="16-byte header"):
        rf.unpack(b"\x01\x02")
    with pytest.raises(ValueError, match="unknown dtype code 9"):
        rf.unpack(struct.pack("<4I", 1, 1, 1, 9) + b"\0\0")
    with pytest.raises(ValueError, match="too short for 4 x 4 x 2 uint16"):
        rf.unpack(struct.pack("<4I", 4, 4, 2, 2) + bytes(10))
    buf = io.BytesIO()
    np.save(buf, np.array([[{"code": "runs"}]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):  # never unpickled
        rf.npy_array(buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="not H x W x C"):
        rf.npy_array(buf.getvalue())
