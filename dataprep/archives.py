"""Archive sources: a .zip or a (compressed) .tar of a folder-per-class tree.

An archive that is damaged or ends early is refused with one line before anything is converted; a
member that cannot be a sample (a corrupt zip member, a link, a FIFO or device, a name that points
outside the tree, a member larger than MAX_MEMBER_BYTES) is skipped and listed, as a bad file in a
folder is. A member is read whole into a worker's memory to be decoded, so none is read past that
limit: a larger one is skipped from the size the archive declares, before any of it is read, and
a zip member is inflated step by step, never past the limit whatever it declares
(dataprep.zip_member).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from contextlib import ExitStack
from pathlib import Path, PurePosixPath

from dataprep.convert import SkipImage
from dataprep.sources import Entry, FileSource, display_name, fingerprint_entries, list_tree, not_regular
from dataprep.zip_member import read_member
from fasthpt.errors import UserError

# The most one member may hold. An image file this large is far beyond what prep makes of it (the
# longer side is cut to --max-res, 256 px by default) and each worker holds it whole while decoding.
MAX_MEMBER_BYTES = 512 << 20

# A zip starts with a local file header, or with the end record when it is empty (PKWARE APPNOTE
# 6.3.10, sections 4.3.7 and 4.3.16): such a file that zipfile cannot open is a damaged zip.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# POSIX ustar headers hold "ustar" at byte 257 (POSIX.1-1988, pax "ustar Interchange Format").
_USTAR_MAGIC = (257, b"ustar")
# Compressed tars are read through these (gzip, bzip2, xz magic numbers: RFC 1952, bzip2, xz file
# format 2.2), so a stream that ends early raises EOFError instead of passing for a non-tar.
_DECOMPRESSORS = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878; Python's tarfile reads zstd only from 3.14
# Member types that are not file data, as the file kinds of stat (tar's own type codes otherwise).
_TAR_KINDS = {tarfile.SYMTYPE: stat.S_IFLNK, tarfile.FIFOTYPE: stat.S_IFIFO,
              tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK}
# What a damaged compressed stream raises while it is read (gzip and bz2 raise OSError without an
# errno; an OSError with one is the disk's, e.g. a full disk under the scratch copy).
_STREAM_ERRORS = (tarfile.ReadError, EOFError, zlib.error, lzma.LZMAError, OSError)
_ZIP_MEMBER_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)


def open_archive(name: str, path: Path, scratch: Path, class_depth: int | None = None):
    """A ZipSource or TarSource for the archive at path, or None when it is neither."""
    with open(path, "rb") as f:
        head = f.read(512)
    if zipfile.is_zipfile(path) or head.startswith(_ZIP_MAGIC):
        return ZipSource(name, path, class_depth)
    at, magic = _USTAR_MAGIC
    if _decompressor(head) or head[at : at + len(magic)] == magic or tarfile.is_tarfile(path):
        return TarSource(name, path, scratch, class_depth)
    if head.startswith(_ZSTD_MAGIC):
        raise UserError(f"--src {display_name(str(path))}: zstd-compressed archives are not supported; "
                        "decompress it first (zstd -d)")
    return None


def _decompressor(head: bytes):
    return next((opener for magic, opener in _DECOMPRESSORS.items() if head.startswith(magic)), None)


class ZipSource(FileSource):
    kind = "zip"

    def __init__(self, name: str, path: Path, class_depth: int | None = None):
        self.path = path
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, EOFError, ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"--src {display_name(str(path))}: damaged zip archive, truncated or "
                            f"corrupt ({display_name(str(exc))}); re-download it") from None
        files = [i for i in infos if not i.is_dir()]
        reasons = {id(i): _zip_member_kind(i) or too_large(i.file_size) for i in files}
        rejected = [(i.filename, reasons[id(i)]) for i in files if reasons[id(i)]]
        entries = [Entry(i.filename, i.file_size, _zip_mtime(i)) for i in files if not reasons[id(i)]]
        self._infos = {i.filename: i for i in files}  # a name held twice: its last copy, as listed
        dirs = [i.filename.rstrip("/") for i in infos if i.is_dir()]
        dirs += [str(PurePosixPath(e.path).parent) for e in entries]
        listing = list_tree(entries, dirs, rejected, class_depth)
        super().__init__(name, listing, fingerprint_entries(self.kind, entries))

    def _read(self, path: str) -> bytes:
        try:
            return read_member(self.path, self._infos[path], MAX_MEMBER_BYTES)
        except _ZIP_MEMBER_ERRORS as exc:  # e.g. zlib's "invalid block type"
            raise SkipImage(f"unreadable zip member: {exc}") from None


def too_large(size: int) -> str | None:
    """Why a member of ``size`` bytes is not read, or None."""
    if size <= MAX_MEMBER_BYTES:
        return None
    return (f"larger ({size / 2**20:,.0f} MiB) than the {MAX_MEMBER_BYTES >> 20} MiB limit on one archive member; "
            "not read")


def _zip_member_kind(info: zipfile.ZipInfo) -> str | None:
    """Why a member made on Unix is not file data (a symlink, a FIFO), from the st_mode that zip
    keeps in the high 16 bits of external_attr (APPNOTE 4.4.15); None for file data."""
    mode = info.external_attr >> 16
    if info.create_system != 3 or stat.S_IFMT(mode) == 0:
        return None
    return not_regular(mode)


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    y, mo, d, h, mi, s = info.date_time
    return float(((((y * 12 + mo) * 31 + d) * 24 + h) * 60 + mi) * 60 + s)


class TarSource(FileSource):
    """Members are read by offset (os.pread: safe from any process). A compressed tar is first
    unpacked once into one scratch blob, since compressed streams cannot be read at random.

    A tar that ends early is refused rather than converted in part: archives list their files in
    order (usually class by class), so the lost tail is whole classes or most of one, and the
    output would quietly hold other classes, labels and splits than the real dataset."""

    kind = "tar"

    def __init__(self, name: str, path: Path, scratch: Path, class_depth: int | None = None):
        self.offsets: dict[str, tuple[int, int]] = {}
        with open(path, "rb") as f:
            opener = _decompressor(f.read(8))
        self.blob = scratch / "source.blob" if opener else path
        try:
            entries, dirs, rejected = self._index(path, opener)
        except _Broken as exc:
            raise UserError(f"--src {display_name(str(path))}: {display_name(str(exc))} after "
                            f"{len(self.offsets)} whole files; nothing was converted: re-download it, "
                            "or extract what it holds and pass that folder") from None
        listing = list_tree(entries, dirs, rejected, class_depth)
        super().__init__(name, listing, fingerprint_entries(self.kind, entries))

    def _index(self, path: Path, opener):
        entries, dirs, rejected, ends = [], [], [], []
        size = None if opener else path.stat().st_size
        with ExitStack() as stack:
            blob = None
            if opener:
                self.blob.parent.mkdir(parents=True, exist_ok=True)
                blob = stack.enter_context(open(self.blob, "wb"))
            stream = stack.enter_context(opener(path) if opener else open(path, "rb"))
            try:
                tf = stack.enter_context(tarfile.open(fileobj=stream, mode="r:", tarinfo=_recording(ends)))
                for m in tf:
                    if m.isdir():
                        dirs.append(m.name.rstrip("/"))
                    elif reason := self._locate(tf, m, blob, size):
                        rejected.append((m.name, reason))
                    else:
                        entries.append(Entry(m.name, self.offsets[m.name][1], m.mtime))
                        dirs.append(str(PurePosixPath(m.name).parent))
            except _STREAM_ERRORS as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise
                raise _Broken.of(exc) from None
        _check_end(ends)
        return entries, dirs, rejected

    def _locate(self, tf: tarfile.TarFile, m: tarfile.TarInfo, blob, size: int | None) -> str | None:
        """Note where member m's bytes are, or return why it cannot be a sample."""
        if m.islnk() and m.linkname in self.offsets:  # a hard link: an earlier member's bytes
            self.offsets[m.name] = self.offsets[m.linkname]
            return None
        if m.islnk():
            return "hard link to a member that is not before it in the archive"
        if not m.isfile():
            kind = _TAR_KINDS.get(m.type)
            return not_regular(kind) if kind else f"unsupported member type {m.type!r}"
        if m.issparse():
            return "sparse archive member (unsupported)"
        if reason := too_large(m.size):  # never copied nor read: tarfile steps over its data
            return reason
        if blob is None:  # read in place later; tarfile does not check that the data is there
            offset, whole = m.offset_data, m.offset_data + m.size <= size
        else:
            offset = blob.tell()
            shutil.copyfileobj(tf.extractfile(m), blob)
            whole = blob.tell() - offset == m.size
        if not whole:
            raise _Broken("truncated tar archive (its last file is cut short)")
        self.offsets[m.name] = (offset, m.size)
        return None

    def _read(self, path: str) -> bytes:
        offset, size = self.offsets[path]
        fd = os.open(self.blob, os.O_RDONLY)
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        if len(data) != size:
            raise SkipImage(f"truncated archive member ({len(data)} of {size} bytes)")
        return data


class _Broken(Exception):
    """The tar archive ends early or is damaged; the message says which and how."""

    @classmethod
    def of(cls, exc: Exception) -> _Broken:
        # EOFError: a compressed stream cut short; tarfile's ReadError("unexpected end of data"):
        # member data cut short (TarFile.next)
        early = isinstance(exc, EOFError) or "unexpected end" in str(exc)
        return cls(f"{'truncated' if early else 'damaged'} tar archive ({exc})")


def _recording(ends: list):
    """A TarInfo class that records why tarfile stopped reading headers: tarfile ends its iteration
    without an error on a header that is cut short, missing or garbled (tarfile.py, TarFile.next),
    which is how a truncated download looks; only an all-zero block is a real end (POSIX ustar)."""

    class Recording(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tf):
            try:
                return super().fromtarfile(tf)
            except tarfile.HeaderError as exc:
                ends.append(exc)
                raise

    return Recording


def _check_end(ends: list) -> None:
    last = ends[-1] if ends else None
    if isinstance(last, tarfile.EOFHeaderError):
        return
    if isinstance(last, tarfile.InvalidHeaderError):
        raise _Broken(f"damaged tar archive (a header is invalid: {last})")
    raise _Broken("truncated tar archive (it stops without the end-of-archive marker)")

