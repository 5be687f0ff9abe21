"""Reading one zip member with a bound on what it inflates to.

zipfile's own reader cuts a member to the size the central directory declares, but only after
each step inflated its chunk of compressed bytes whole: a bzip2 member inflates some 40 MB per
40 compressed bytes, so a few kilobytes declared as a small image can fill memory. Here every
member is read by offset (os.pread: no shared file position, safe in any process) and inflated
step by step with a ``max_length``, never past ``limit`` bytes; its size and CRC-32 are checked
against the central directory at the end.
"""

from __future__ import annotations

import bz2
import itertools
import lzma
import os
import struct
import zipfile
import zlib
from pathlib import Path

from dataprep.convert import SkipImage

_CHUNK = 1 << 16  # compressed bytes read per step
# The local file header (PKWARE APPNOTE 6.3.10, 4.3.7): signature, then 22 bytes, then the
# lengths of the name and of the extra field; the member's data follows them.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_ENCRYPTED = 0x1  # general purpose bit 0 (APPNOTE 4.4.4)


def read_member(path: Path, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The bytes of member ``info`` of the zip at ``path``; SkipImage when it is encrypted, uses a
    method this reader lacks, inflates past ``limit``, is damaged or fails its CRC-32."""
    if info.flag_bits & _ENCRYPTED:
        raise SkipImage("encrypted zip member (unsupported)")
    fd = os.open(path, os.O_RDONLY)
    try:
        start = _data_offset(fd, info)
        chunks = _compressed(fd, start, info.compress_size)
        data = _inflated(chunks, info.compress_type, limit)
    finally:
        os.close(fd)
    if len(data) != info.file_size:
        raise SkipImage(f"unreadable zip member: it holds {len(data)} bytes, not the {info.file_size} it declares")
    if zlib.crc32(data) != info.CRC:
        raise SkipImage(f"unreadable zip member: Bad CRC-32 for file {info.filename!r}")
    return data


def _data_offset(fd: int, info: zipfile.ZipInfo) -> int:
    header = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
    if len(header) != _LOCAL_HEADER.size:
        raise SkipImage("unreadable zip member: its header lies past the end of the archive")
    magic, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if magic != b"PK\x03\x04":
        raise SkipImage("unreadable zip member: no local file header where the directory points")
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _compressed(fd: int, start: int, size: int):
    """The member's compressed bytes, ``_CHUNK`` at a time."""
    done = 0
    while done < size:
        block = os.pread(fd, min(_CHUNK, size - done), start + done)
        if not block:
            raise SkipImage("unreadable zip member: truncated (its data ends early)")
        done += len(block)
        yield block


def _inflated(chunks, method: int, limit: int) -> bytes:
    out = bytearray()
    if method == zipfile.ZIP_STORED:
        for block in chunks:
            out += block
            _check(out, limit)
        return bytes(out)
    decoder, chunks = _decoder(method, chunks)
    for block in chunks:
        data = block
        while not decoder.eof:
            out += decoder.decompress(data, limit + 1 - len(out))  # at most one byte past the limit
            _check(out, limit)
            data = b""
            if decoder.needs_input:
                break
    return bytes(out)


def _check(out: bytearray, limit: int) -> None:
    if len(out) > limit:
        raise SkipImage(f"zip member inflates past {limit >> 20} MiB, the limit on one archive member; not read "
                        "further")


def _decoder(method: int, chunks):
    """(a decoder with bz2's interface: eof, needs_input, decompress(data, max_length), the chunks
    it is to be fed) for the member's compression method."""
    if method == zipfile.ZIP_DEFLATED:
        return _Deflate(), chunks
    if method == zipfile.ZIP_BZIP2:
        return bz2.BZ2Decompressor(), chunks
    if method == zipfile.ZIP_LZMA:
        return _lzma(chunks)
    name = zipfile.compressor_names.get(method, "unknown")
    raise SkipImage(f"unreadable zip member: compression method {method} ({name}) is not supported")


class _Deflate:
    """zlib's raw inflater with the interface of bz2's and lzma's decompressors. zlib keeps the
    input a max_length stopped it from consuming in unconsumed_tail, and may hold output of input
    it did consume (a long match): while either may be there it needs no new input."""

    def __init__(self):
        self._z, self._tail, self._full = zlib.decompressobj(-zlib.MAX_WBITS), b"", False

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def needs_input(self) -> bool:
        return not self._tail and not self._full

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._z.decompress(self._tail + data, max_length)
        self._tail, self._full = self._z.unconsumed_tail, len(out) == max_length
        return out


def _lzma(chunks):
    """An LZMA member starts with a version (2 bytes), the size of the properties (2 bytes) and the
    LZMA1 properties (APPNOTE 5.8.8): lc, lp and pb in one byte, then the dictionary size (4 bytes,
    little-endian); the raw LZMA1 stream follows."""
    head = b""
    for block in chunks:
        head += block
        if len(head) >= 9:
            break
    if len(head) < 9 or struct.unpack("<H", head[2:4])[0] != 5:
        raise SkipImage("unreadable zip member: not an LZMA header")
    props, dict_size = head[4], struct.unpack("<I", head[5:9])[0]
    lc, lp, pb = props % 9, props // 9 % 5, props // 45
    decoder = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[
        {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}])
    return decoder, itertools.chain([head[9:]], chunks)
