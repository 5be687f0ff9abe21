"""Archive members cannot exhaust memory: a member larger than the limit on one member is skipped
and listed without being inflated (a 2 GiB zip member, built cheaply: 2 MB of deflate), and a zip
member that declares a small size but inflates to more (deflate, bzip2, LZMA) is never inflated
past the limit. What is read is measured by counting the bytes every decompressor hands out."""

from __future__ import annotations

import bz2
import io
import json
import lzma
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from dataprep import archives, prepare
from dataprep.archives import TarSource, ZipSource
from dataprep.convert import SkipImage

MiB = 1 << 20
HUGE = 2 << 30  # 2 GiB
CRC_OF_HUGE_ZEROS = 0x4DBDF21C  # zlib.crc32(bytes(2 << 30)), worked out once (1 s here)
FAST = dict(val_frac=0.0, test_frac=0.0, formats=("wds",), workers=1, progress=False)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


SMALL = {f"wrap/{c}/{i}.png": png(10 * k + i) for k, c in enumerate("ab") for i in range(3)}


class Tally:
    """Bytes handed out by decompressors: in all, and the most in one call. Past ``stop`` it fails
    at once, so that a reader that inflates a member whole fails the test instead of filling memory."""

    def __init__(self, stop: int):
        self.total = self.largest = 0
        self.stop = stop

    def wrap(self, factory):
        tally = self

        class Counted:
            def __init__(self, *args, **kwargs):
                self._inner = factory(*args, **kwargs)

            def decompress(self, data, *args, **kwargs):
                out = self._inner.decompress(data, *args, **kwargs)
                tally.total += len(out)
                tally.largest = max(tally.largest, len(out))
                assert tally.total <= tally.stop, f"{tally.total} bytes inflated: the limit is not kept"
                return out

            def __getattr__(self, name):
                return getattr(self._inner, name)

        return Counted


@pytest.fixture
def tally(monkeypatch):
    """Count what every zlib, bzip2 and LZMA decompressor in this process inflates."""
    t = Tally(stop=64 * MiB)
    monkeypatch.setattr(zlib, "decompressobj", t.wrap(zlib.decompressobj))
    monkeypatch.setattr(bz2, "BZ2Decompressor", t.wrap(bz2.BZ2Decompressor))
    monkeypatch.setattr(lzma, "LZMADecompressor", t.wrap(lzma.LZMADecompressor))
    return t


def deflated_zeros(size: int) -> bytes:
    """A raw deflate stream of ``size`` zero bytes (a multiple of 1 MiB), about 1 KB per MiB: one
    MiB compressed and ended with a full flush (byte-aligned, no back-references across it), then
    repeated, then the final block."""
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    one = co.compress(bytes(MiB)) + co.flush(zlib.Z_FULL_FLUSH)
    return one * (size // MiB) + co.flush()


def zip_with_huge_member(path, name: str = "wrap/a/huge.png"):
    """A zip whose first member inflates to 2 GiB of zeros (written by hand: zipfile would have to
    compress the 2 GiB), then SMALL appended by zipfile itself."""
    data, raw = deflated_zeros(HUGE), name.encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, CRC_OF_HUGE_ZEROS, len(data), HUGE,
                        len(raw), 0) + raw
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, CRC_OF_HUGE_ZEROS,
                          len(data), HUGE, len(raw), 0, 0, 0, 0, 0, 0) + raw
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)
    with zipfile.ZipFile(path, "a") as zf:
        for member, content in SMALL.items():
            zf.writestr(member, content)
    return path


def test_the_hand_made_member_is_a_real_2_gib_member():
    stream = deflated_zeros(4 * MiB)
    assert zlib.decompress(stream, -zlib.MAX_WBITS) == bytes(4 * MiB)
    assert len(deflated_zeros(HUGE)) < 3 * MiB  # what the test writes to disk


def test_a_2_gib_zip_member_is_skipped_and_listed_without_being_inflated(tmp_path, tally, capsys):
    src = zip_with_huge_member(tmp_path / "huge.zip")
    assert zipfile.ZipFile(src).getinfo("wrap/a/huge.png").file_size == HUGE
    out = prepare("z", out=tmp_path / "out", src=src, **FAST)
    manifest = json.loads((out / "manifest.json").read_text())
    (skip,) = manifest["skipped"]
    assert skip["path"] == "wrap/a/huge.png" and "limit on one archive member" in skip["reason"]
    assert "2,048 MiB" in skip["reason"] and manifest["splits"]["train"]["count"] == len(SMALL)
    assert "wrap/a/huge.png: larger (2,048 MiB)" in capsys.readouterr().err
    assert tally.total < MiB  # the six small PNGs, nothing of the 2 GiB


def test_a_member_that_declares_less_than_it_holds_is_never_inflated_past_the_limit(tmp_path, tally, monkeypatch):
    """The central directory says 1 KB; the data inflates to 2 GiB."""
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", MiB)
    src = _declaring(zip_with_huge_member(tmp_path / "huge.zip"), "wrap/a/huge.png", 1000)
    source = ZipSource("z", src)
    i = [source.key(j) for j in range(len(source))].index("wrap/a/huge.png")
    with pytest.raises(SkipImage, match="inflates past 1 MiB"):
        source.load(i)
    assert tally.total <= MiB + 1 and tally.largest <= MiB + 1


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
@pytest.mark.parametrize("declared", [1000, 3 * MiB])
def test_every_zip_method_is_inflated_step_by_step_within_the_limit(tmp_path, tally, monkeypatch, method, declared):
    """bzip2 inflates 8 MiB of zeros from 40 bytes: zipfile's own reader would hand out all of it
    in one step before cutting it to the declared size."""
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 2 * MiB)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("wrap/a/bomb.png", bytes(8 * MiB))
        for name, content in SMALL.items():
            zf.writestr(name, content)
    src = _declaring(tmp_path / "z.zip", "wrap/a/bomb.png", declared, buf.getvalue())
    source = ZipSource("z", src)
    keys = [source.key(j) for j in range(len(source))]
    if declared > 2 * MiB:  # skipped from its declared size, never opened
        assert "wrap/a/bomb.png" not in keys
        assert "limit on one archive member" in dict(source.skipped)["wrap/a/bomb.png"]
        assert tally.total == 0
        return
    with pytest.raises(SkipImage, match="inflates past 2 MiB"):
        source.load(keys.index("wrap/a/bomb.png"))
    assert tally.largest <= 2 * MiB + 1 and tally.total <= 2 * MiB + 1
    for j, key in enumerate(keys):  # the honest members still read, through the same reader
        if key != "wrap/a/bomb.png":
            assert source.load(j)[0].pixels.shape == (8, 8, 3)


def test_a_member_inflating_to_less_than_it_declares_is_skipped(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("wrap/a/short.png", png(1))
        zf.writestr("wrap/b/ok.png", png(2))
    src = _declaring(tmp_path / "z.zip", "wrap/a/short.png", len(png(1)) + 100, buf.getvalue())
    source = ZipSource("z", src)
    with pytest.raises(SkipImage, match="not the .* it declares"):
        source.load([source.key(j) for j in range(len(source))].index("wrap/a/short.png"))


def _declaring(path, name: str, size: int, data: bytes | None = None):
    """``data`` (else the file at ``path``) with ``name``'s uncompressed size rewritten to ``size`` in
    its local header and its central directory entry (APPNOTE 4.3.7, 4.3.12), written to ``path``."""
    data = bytearray(path.read_bytes() if data is None else data)
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(name)
    data[info.header_offset + 22 : info.header_offset + 26] = struct.pack("<I", size)
    raw = name.encode()
    at = data.find(b"PK\x01\x02", info.header_offset + 30)
    while data[at + 46 : at + 46 + len(raw)] != raw:
        at = data.find(b"PK\x01\x02", at + 4)
    if data[at + 24 : at + 28] == b"\xff\xff\xff\xff":  # a zip64 entry: the size is in its extra field
        extra = at + 46 + len(raw)
        data[extra + 4 : extra + 12] = struct.pack("<Q", size)
    else:
        data[at + 24 : at + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_a_tar_member_larger_than_the_limit_is_skipped_and_never_copied(tmp_path, tally, monkeypatch, mode):
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", MiB)
    path = tmp_path / "src.tar"
    with tarfile.open(path, mode) as tf:
        for name, content in {"wrap/a/big.png": bytes(4 * MiB), **SMALL}.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    scratch = tmp_path / "scratch"
    source = TarSource("t", path, scratch)
    assert dict(source.skipped)["wrap/a/big.png"].startswith("larger (4 MiB) than the 1 MiB limit")
    assert sorted(source.key(j) for j in range(len(source))) == sorted(SMALL)
    blob = scratch / "source.blob"
    assert not blob.exists() or blob.stat().st_size < MiB  # the big member was stepped over, not copied
    # a compressed tar is inflated as it streams past (never more than a small buffer at a time)
    assert tally.largest < MiB
