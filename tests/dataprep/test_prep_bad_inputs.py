"""Every bad input to `fasthpt prep` ends in one line (exit 2) or a skip that is counted and listed in
the summary and the manifest: broken archives, unsafe or odd names, files that are not files, EXIF."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_images import tiny_image, write_tiny_folder

from dataprep import prepare
from dataprep.convert import decode_bytes
from dataprep.samples import read_samples
from dataprep.sources import UNSAFE_PATH
from fasthpt.cli import main
from fasthpt.manifest import load_manifest

FAST = dict(formats=("wds",), workers=1, progress=False, val_frac=0.0, test_frac=0.0)


def png(label: int = 0, index: int = 0, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(tiny_image(label, index, size)).save(buf, format="PNG")
    return buf.getvalue()


def add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind=tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            add(tf, name, data)
    return buf.getvalue()


def skipped(out: Path) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in load_manifest(out).raw["skipped"]}


def one_line_error(argv, capsys) -> str:
    assert main(["prep", *argv, "--formats", "wds", "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fasthpt prep: error:"), err
    return err


GOOD = {f"wrap/{c}/{i}.png": png(k, i) for k, c in enumerate(("a", "b")) for i in range(3)}


# ---------------------------------------------------------------- truncated and damaged tars

def _cuts() -> dict[str, int]:
    """Places to cut the plain tar of GOOD: between two members (tarfile then stops quietly), inside
    a header, inside a member's data, and just before the end-of-archive blocks."""
    data = tar_bytes(GOOD)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        ends = [m.offset_data + -(-m.size // 512) * 512 for m in tf]
        third = tf.getmembers()[2]
    return {"between members": ends[2], "inside a header": ends[2] + 100,
            "inside data": third.offset_data + 10, "before the end blocks": ends[-1]}


@pytest.mark.parametrize("where", list(_cuts()))
def test_a_truncated_tar_is_refused_with_what_was_whole(tmp_path, capsys, where):
    cut = _cuts()[where]
    (tmp_path / "t.tar").write_bytes(tar_bytes(GOOD)[:cut])
    err = one_line_error(["--dataset", "t", "--src", str(tmp_path / "t.tar"), "--out", str(tmp_path / "out")], capsys)
    assert "truncated tar archive" in err and "whole files; nothing was converted" in err
    whole = {"between members": 3, "inside a header": 3, "inside data": 2, "before the end blocks": 6}[where]
    assert f"after {whole} whole files" in err
    assert not (tmp_path / "out" / "t").exists()


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_a_truncated_compressed_tar_is_refused(tmp_path, capsys, mode):
    data = tar_bytes(GOOD, mode)
    (tmp_path / "t.tgz").write_bytes(data[: len(data) * 2 // 3])
    err = one_line_error(["--dataset", "t", "--src", str(tmp_path / "t.tgz"), "--out", str(tmp_path / "out")], capsys)
    assert "truncated tar archive" in err
    assert not list((tmp_path / "out").iterdir())  # the scratch copy is gone too


def test_a_tar_with_a_garbled_header_is_called_damaged(tmp_path, capsys):
    data = bytearray(tar_bytes(GOOD))
    header = _cuts()["between members"]  # the 4th member's header
    data[header + 148 : header + 156] = b"0000000\0"  # a wrong checksum
    (tmp_path / "t.tar").write_bytes(bytes(data))
    err = one_line_error(["--dataset", "t", "--src", str(tmp_path / "t.tar"), "--out", str(tmp_path / "out")], capsys)
    assert "damaged tar archive" in err and "after 3 whole files" in err


# ---------------------------------------------------------------- zips

def _zip(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _member_data(data: bytes, name: str) -> slice:
    """Where a member's (compressed) bytes lie: after its local header (APPNOTE 4.3.7)."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    return slice(start, start + info.compress_size)


def test_corrupt_zip_members_are_skipped_and_listed(tmp_path, capsys):
    data = bytearray(_zip(GOOD))
    bad_stream = _member_data(bytes(data), "wrap/a/0.png")
    data[bad_stream] = b"\xff" * (bad_stream.stop - bad_stream.start)  # deflate block type 3: zlib.error
    stored = bytearray(_zip({"wrap/b/9.png": png(1, 9)}, zipfile.ZIP_STORED))
    where = _member_data(bytes(stored), "wrap/b/9.png")
    stored[where.start + 40] ^= 0xFF  # a flipped byte: Bad CRC-32
    (tmp_path / "z.zip").write_bytes(bytes(data))
    (tmp_path / "s.zip").write_bytes(bytes(stored))
    out = prepare("z", out=tmp_path / "out", src=tmp_path / "z.zip", **FAST)
    reasons = skipped(out)
    assert list(reasons) == ["wrap/a/0.png"] and "unreadable zip member" in reasons["wrap/a/0.png"]
    assert load_manifest(out).count("train") == len(GOOD) - 1
    assert "skipped 1 files" in capsys.readouterr().err
    from dataprep.archives import ZipSource
    from dataprep.convert import SkipImage

    with pytest.raises(SkipImage, match="unreadable zip member: Bad CRC-32"):
        ZipSource("s", tmp_path / "s.zip").load(0)


def test_a_truncated_zip_is_called_damaged_not_unknown(tmp_path, capsys):
    data = _zip(GOOD)
    (tmp_path / "z.zip").write_bytes(data[: len(data) - 40])  # the central directory's end is lost
    err = one_line_error(["--dataset", "z", "--src", str(tmp_path / "z.zip"), "--out", str(tmp_path / "out")], capsys)
    assert "damaged zip archive" in err and "not a folder" not in err


# ---------------------------------------------------------------- names

def test_names_that_are_not_utf8_are_kept_and_written_safely(tmp_path, capsys):
    src = write_tiny_folder(tmp_path / "src", per_class=2, size=16)
    root = os.fsencode(src)
    os.mkdir(root + b"/caf\xe9")  # a Latin-1 class folder name
    for name in (b"/caf\xe9/x.png", b"/blue_checks/\xff\xfe.png"):
        Path(os.fsdecode(root + name)).write_bytes(png(2, 3))
    Path(os.fsdecode(root + b"/red_stripes/bad\xff.jpg")).write_bytes(b"not an image")
    argv = ["prep", "--dataset", "n", "--src", str(src), "--out", str(tmp_path / "out"),
            "--formats", "wds", "--workers", "1", "--val-frac", "0", "--test-frac", "0", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "red_stripes/bad\\xff.jpg: not an image" in err
    text = (tmp_path / "out" / "n" / "manifest.json").read_bytes().decode("utf-8")
    assert "\\udc" not in text  # no lone surrogates for strict JSON readers
    m = json.loads(text)
    assert "caf\\xe9" in m["classes"] and "red_stripes/bad\\xff.jpg" in {s["path"] for s in m["skipped"]}
    names = [name for name, _ in read_samples(tmp_path / "out" / "n", "train")]
    assert len(names) == m["splits"]["train"]["count"] == 4 * 2 + 2
    assert all((src / name).is_file() for name in names)  # each maps back to its exact file
    assert {os.fsencode(n) for n in names} >= {b"caf\xe9/x.png", b"blue_checks/\xff\xfe.png"}


def test_tar_member_names_that_are_not_utf8_are_kept(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in {**GOOD, os.fsdecode(b"wrap/a/\xe9t\xe9.png"): png(1, 1)}.items():
            add(tf, name, data)
    (tmp_path / "n.tar").write_bytes(buf.getvalue())
    out = prepare("n", out=tmp_path / "out", src=tmp_path / "n.tar", **FAST)
    names = {os.fsencode(name) for name, _ in read_samples(out, "train")}
    assert len(names) == len(GOOD) + 1 and b"wrap/a/\xe9t\xe9.png" in names
    lines = (out / "samples" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert "wrap/a/\\xe9t\\xe9.png" in {json.loads(line)["path"] for line in lines}  # its display form


def test_a_newline_in_a_name_cannot_shift_the_sample_list(tmp_path):
    src = write_tiny_folder(tmp_path / "src", per_class=2, size=16)
    odd = ["blue_checks/two\nlines.png", "green_rings/tab\tand \"quote\".png", "red_stripes/\x1b[31mred.png"]
    for name in odd:
        (src / name).write_bytes(png(0, 7))
    out = prepare("nl", out=tmp_path / "out", src=src, **FAST)
    got = read_samples(out, "train")
    lines = (out / "samples" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(got) == 4 * 2 + 3
    assert set(odd) <= {name for name, _ in got}
    classes = load_manifest(out).classes
    assert all(name.split("/")[0] == classes[label] for name, label in got)


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_absolute_and_dotdot_members_are_skipped_as_unsafe(tmp_path, kind):
    unsafe = {"/abs/a/x.png": png(), "../b/y.png": png(), "wrap/a/../../c/z.png": png(), "wrap/../w.png": png()}
    members = {**GOOD, **unsafe}
    path = tmp_path / f"u.{kind}"
    path.write_bytes(tar_bytes(members) if kind == "tar" else _zip(members))
    out = prepare("u", out=tmp_path / "out", src=path, **FAST)
    assert load_manifest(out).classes == ["a", "b"] and load_manifest(out).count("train") == len(GOOD)
    assert skipped(out) == {name: UNSAFE_PATH for name in unsafe}


# ---------------------------------------------------------------- files that are not files

@pytest.mark.timeout(120)  # the old behaviour: blocked forever opening the FIFO
def test_fifos_and_sockets_in_a_tree_are_skipped_without_being_opened(tmp_path, capsys, monkeypatch):
    src = write_tiny_folder(tmp_path / "s", per_class=2, size=16)
    os.mkfifo(src / "blue_checks" / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    try:
        with monkeypatch.context() as m:
            m.chdir(src / "green_rings")
            sock.bind("s.png")  # a relative name: socket paths are limited to 108 bytes
        out = prepare("f", out=tmp_path / "out", src=src, **FAST)
    finally:
        sock.close()
    assert skipped(out) == {"blue_checks/pipe.png": "not a regular file (fifo)",
                            "green_rings/s.png": "not a regular file (socket)"}
    assert "blue_checks/pipe.png: not a regular file (fifo)" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_fifo_as_src_is_refused_without_being_opened(tmp_path, capsys):
    os.mkfifo(tmp_path / "data.tar")
    err = one_line_error(["--dataset", "f", "--src", str(tmp_path / "data.tar"), "--out", str(tmp_path / "o")], capsys)
    assert "not a regular file (fifo)" in err


def test_links_and_devices_in_a_tar_are_listed(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in GOOD.items():
            add(tf, name, data)
        add(tf, "wrap/a/same.png", kind=tarfile.LNKTYPE, link="wrap/a/0.png")  # a hard link: kept
        add(tf, "wrap/a/fifo.png", kind=tarfile.FIFOTYPE)
        add(tf, "wrap/b/tty.png", kind=tarfile.CHRTYPE)
        add(tf, "wrap/b/link.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add(tf, "wrap/b/0.png", png(3, 3))  # the same name again: the later copy wins, as on extraction
    (tmp_path / "l.tar").write_bytes(buf.getvalue())
    out = prepare("l", out=tmp_path / "out", src=tmp_path / "l.tar", **FAST)
    assert skipped(out) == {"wrap/a/fifo.png": "not a regular file (fifo)",
                            "wrap/b/tty.png": "not a regular file (character device)",
                            "wrap/b/link.png": "not a regular file (symbolic link)",
                            "wrap/b/0.png": "duplicate name in the archive (its last copy is used)"}
    assert load_manifest(out).count("train") == len(GOOD) + 1


def test_a_symlink_loop_in_the_tree_is_listed_once(tmp_path):
    src = write_tiny_folder(tmp_path / "s", per_class=2, size=16)
    (src / "blue_checks" / "again").symlink_to(src, target_is_directory=True)
    out = prepare("loop", out=tmp_path / "out", src=src, **FAST)
    m = load_manifest(out)
    assert m.count("train") == 8 and len(m.classes) == 4
    assert skipped(out) == {"blue_checks/again": "symlink loop (links to a folder above it), not entered"}


# ---------------------------------------------------------------- EXIF orientation

# What a viewer shows for each EXIF orientation (EXIF 2.32, tag 0x0112), in numpy terms.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def _jpeg_with_orientation(orientation: int, h: int = 16, w: int = 32) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(tiny_image(2, 1, max(h, w))[:h, :w]).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied_at_decode(orientation):
    data = _jpeg_with_orientation(orientation)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # as stored: 16 x 32
    got = decode_bytes(data)
    assert stored.shape == (16, 32, 3)
    assert np.array_equal(got.pixels, UPRIGHT[orientation](stored))
    assert (got.jpeg is None) == (orientation != 1)  # a turned image is re-encoded, without EXIF


def test_a_rotated_photo_is_stored_upright(tmp_path):
    src = tmp_path / "src"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        (src / c / "portrait.jpg").write_bytes(_jpeg_with_orientation(6))
    out = prepare("r", out=tmp_path / "out", src=src, **FAST)
    m = load_manifest(out)
    assert m.raw["storage"]["max_hw"] == [32, 16]
    with tarfile.open(m.wds_shards("train")[0]) as tf:
        stored = [Image.open(tf.extractfile(x)) for x in tf if x.name.endswith(".jpg")]
        assert [(img.size, img.getexif().get(0x0112)) for img in stored] == [((16, 32), None)] * 2
