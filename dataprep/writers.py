"""Output formats: WebDataset shards (+ DALI index files) and FFCV .beton files.

Both formats hold the same JPEG bytes (encoded once, in dataprep.convert). The shards are written
first, by the parent process, as results stream in; the .beton is then filled from the shards by
FFCV's own DatasetWriter, which only copies bytes at that point.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fasthpt.errors import FFCV_INSTALL, UserError  # FFCV is an extra (pyproject.toml)
from fasthpt.raster_format import npy_array, pack

# DALI's index format, as written by its own tool (nvidia-dali: wds2idx.py, IndexCreator):
# first line "v1.2 <num_samples>", then one line per sample listing each component as
# "<ext> <data offset in bytes> <size in bytes> <member name>".
DALI_INDEX_VERSION = "v1.2"
# Fixed tar metadata so that the same inputs give byte-identical shards.
_TAR_MTIME = 0
_TAR_MODE = 0o444


@dataclass(slots=True)  # one per sample: keep it small at ImageNet scale
class Record:
    """Where one stored JPEG lives in a shard, plus what the .beton metadata needs."""

    shard: Path
    offset: int
    size: int
    height: int
    width: int
    label: int


class ShardWriter:
    """Writes <dir>/<split>-NNNNNN.tar shards of at most `shard_size` samples, each sample a
    `<key>.jpg` (JPEG bytes; `<key>.npy` for rasters: dataprep/rasters.py) and `<key>.cls` (ASCII
    decimal label), and X.idx beside each X.tar."""

    def __init__(self, folder: Path, split: str, shard_size: int):
        self.folder, self.split, self.shard_size = folder, split, shard_size
        self.shards: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._index_lines: list[str] = []

    def write(self, key: str, image: bytes, label: int, height: int, width: int, ext: str = "jpg") -> Record:
        if self._tar is None or len(self._index_lines) >= self.shard_size:
            self._open_next()
        image_off = self._add(f"{key}.{ext}", image)
        cls = str(int(label)).encode("ascii")
        cls_off = self._add(f"{key}.cls", cls)
        self._index_lines.append(
            f"{ext} {image_off} {len(image)} {key}.{ext} cls {cls_off} {len(cls)} {key}.cls"
        )
        return Record(self.shards[-1], image_off, len(image), height, width, int(label))

    def close(self) -> list[Path]:
        self._finish_current()
        return list(self.shards)

    def _open_next(self) -> None:
        self._finish_current()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.split}-{len(self.shards):06d}.tar"
        self.shards.append(path)
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)

    def _add(self, name: str, data: bytes) -> int:
        """Append one member; return the byte offset of its data in the tar file."""
        tar = self._tar
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), _TAR_MTIME, _TAR_MODE
        header = len(info.tobuf(tar.format, tar.encoding, tar.errors))
        offset = tar.offset + header
        tar.addfile(info, io.BytesIO(data))
        return offset

    def _finish_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        idx = self.shards[-1].with_suffix(".idx")
        lines = [f"{DALI_INDEX_VERSION} {len(self._index_lines)}", *self._index_lines]
        idx.write_text("\n".join(lines) + "\n")
        self._tar, self._index_lines = None, []


class _StoredJpegs:
    """Indexable view of the JPEG bytes already written to the shards (what FFCV's writer reads)."""

    def __init__(self, records: list[Record]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def _bytes(self, r: Record) -> bytes:
        with open(r.shard, "rb") as f:
            f.seek(r.offset)
            return f.read(r.size)

    def __getitem__(self, i: int):
        r = self.records[i]
        return (np.frombuffer(self._bytes(r), dtype=np.uint8), r.height, r.width), r.label


class _StoredRasters(_StoredJpegs):
    """The .npy members already in the shards as FFCV BytesField records (raster_format.pack)."""

    def __getitem__(self, i: int):
        r = self.records[i]
        return np.frombuffer(pack(npy_array(self._bytes(r))), dtype=np.uint8), r.label


def ffcv_installed() -> bool:
    """Whether an ffcv package is there, found without importing it (that takes seconds: numba,
    libffcv). Whether it imports is for import_ffcv to say."""
    try:
        return importlib.util.find_spec("ffcv") is not None
    except (ImportError, ValueError):  # an import hook refused it; an "ffcv" module without a spec
        return False


def import_ffcv(module: str = "ffcv.writer"):
    """Import an FFCV module (or fasthpt's module of FFCV internals); a missing or broken FFCV, or
    another version than the one fasthpt was verified with -> UserError naming the install (one line)."""
    if not ffcv_installed():
        raise UserError(f"FFCV is not installed: {FFCV_INSTALL}")
    try:
        importlib.import_module("fasthpt.data.ffcv_compat")  # checks the version, then imports FFCV
        return importlib.import_module(module)
    except ImportError as exc:  # a shared library it links is gone, or one of its dependencies
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"FFCV is installed but does not import ({reason}); reinstall it: "
                        f"{FFCV_INSTALL}") from None


def _page_size(records: list[Record]) -> int:
    # FFCV stores each sample within one page; its default is 8 MiB (4 * MIN_PAGE_SIZE). Grow it
    # to the next power of two when a single JPEG is larger (a worker would otherwise crash).
    page = 1 << 23
    largest = max((r.size for r in records), default=0) + 4096
    while page < largest:
        page <<= 1
    return page


def write_ffcv(path: Path, records: list[Record], max_res: int | None, jpeg_quality: int,
               progress: bool = True, raster: bool = False) -> None:
    """Write a .beton with fields 'image' (RGBImageField; for rasters a BytesField of
    raster_format.pack records: dataprep/rasters.py) and 'label' (IntField).

    Write mode 'jpg' (every sample JPEG): files 5-10x smaller than 'raw' stay in the page cache,
    FFCV's libjpeg-turbo decode is not the bottleneck of two-view loading (measured: ~4,400
    decodes/s against ~2,300 augmented views/s on 2 cores), and both loader backends then decode
    the identical bytes. Our own encode runs once, in parallel, before this step; the image field
    stores those bytes as they are (ffcv_compat.stored_jpeg_field). One FFCV worker: copying is
    I/O-bound, and a second process measured slower (1.16 s vs 0.69 s for 1,000 samples on 2 cores).
    FFCV's writer runs under ffcv_compat.writer_hooks: a labelled (or silent) progress bar, and a
    writer process that dies is an error instead of a hang.
    """
    compat = import_ffcv("fasthpt.data.ffcv_compat")
    from ffcv.fields import BytesField, IntField
    from ffcv.writer import DatasetWriter

    # a record is never larger than its .npy member (16 header bytes against at least 128)
    image = BytesField() if raster else compat.stored_jpeg_field(max_res, jpeg_quality)
    writer = DatasetWriter(str(path), {"image": image, "label": IntField()},
                           page_size=_page_size(records), num_workers=1)
    with compat.writer_hooks(f"ffcv {path.stem}", progress):
        writer.from_indexed_dataset((_StoredRasters if raster else _StoredJpegs)(records), chunksize=256)
