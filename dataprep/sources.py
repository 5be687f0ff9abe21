"""Where images come from: a folder-per-class tree (plain, .zip or .tar) or an embedded generator.

Every source exposes the same small interface, used by the parent (listing) and by the worker
processes (loading one item):
    .name, .classes, .fingerprint (dict), .skipped [(path, reason)], .warnings [str]
    len(src), src.key(i) -> str (a path-like id), src.load(i) -> (Decoded, label)
`load` raises convert.SkipImage for a file that is not a usable image.
"""

from __future__ import annotations

import abc
import hashlib
import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dataprep.convert import Decoded, SkipImage, decode_bytes
from fasthpt.errors import UserError

# Suffixes used only to find the class-folder level of a tree; files are identified by content.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm"}
_IGNORED_DIRS = {"__MACOSX"}  # resource forks that macOS adds to zip files


@dataclass
class Entry:
    path: str  # posix path relative to the source root
    size: int
    mtime: float


@dataclass
class Listing:
    classes: list[str]
    items: list[tuple[str, int]]  # (path, label), sorted by path
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _visible(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return not any(p.startswith(".") or p in _IGNORED_DIRS for p in parts)


def _class_root(paths: list[str]) -> tuple[str, ...]:
    """The longest directory prefix shared by all image files that still leaves each file a class
    folder: 'UCMerced_LandUse/Images/forest/x.tif' -> ('UCMerced_LandUse', 'Images')."""
    parents = [PurePosixPath(p).parent.parts for p in paths]
    parents = [p for p in parents if p]
    if not parents:
        return ()
    prefix = list(parents[0])
    for parts in parents[1:]:
        n = 0
        while n < min(len(prefix), len(parts)) and prefix[n] == parts[n]:
            n += 1
        del prefix[n:]
    limit = min(len(p) for p in parents) - 1
    return tuple(prefix[: max(0, limit)])


def list_tree(entries: list[Entry], dirs: list[str]) -> Listing:
    """Assign class labels from the folder structure (class = folder path below the shared root)."""
    entries = [e for e in entries if _visible(e.path)]
    images = [e.path for e in entries if PurePosixPath(e.path).suffix.lower() in IMAGE_SUFFIXES]
    root = _class_root(images or [e.path for e in entries])
    by_class: dict[str, list[str]] = {}
    skipped = []
    for e in sorted(entries, key=lambda e: e.path):
        parts = PurePosixPath(e.path).parts
        if parts[: len(root)] != root or len(parts) <= len(root) + 1:
            skipped.append((e.path, "not inside a class folder"))
            continue
        by_class.setdefault("/".join(parts[len(root) : -1]), []).append(e.path)
    classes = sorted(by_class)
    label = {c: i for i, c in enumerate(classes)}
    items = sorted((p, label[c]) for c, ps in by_class.items() for p in ps)
    warnings = [f"empty class folder ignored: {d}" for d in _empty_class_dirs(dirs, root, classes)]
    return Listing(classes, items, skipped, warnings)


def _empty_class_dirs(dirs: list[str], root: tuple[str, ...], classes: list[str]) -> list[str]:
    used = {tuple(c.split("/")) for c in classes}
    used_prefixes = {u[:k] for u in used for k in range(1, len(u) + 1)}
    empty = []
    for d in sorted(set(dirs)):
        parts = PurePosixPath(d).parts
        if not _visible(d) or parts[: len(root)] != root or len(parts) != len(root) + 1:
            continue
        if parts[len(root) :] not in used_prefixes:
            empty.append(d)
    return empty


def fingerprint_entries(kind: str, entries: list[Entry]) -> dict:
    """Hash of sorted relative paths, sizes and mtimes: changes when any file changes."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path):
        h.update(f"{e.path}\0{e.size}\0{int(e.mtime)}\n".encode())
    return {"kind": kind, "files": len(entries), "sha256": h.hexdigest()}


class FileSource(abc.ABC):
    """Base for tree sources: subclasses provide _read(path) -> bytes."""

    kind = "files"

    def __init__(self, name: str, listing: Listing, fingerprint: dict):
        self.name = name
        self.classes = listing.classes
        self.items = listing.items
        self.skipped = listing.skipped
        self.warnings = listing.warnings
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.items)

    def key(self, i: int) -> str:
        return self.items[i][0]

    def load(self, i: int) -> tuple[Decoded, int]:
        path, label = self.items[i]
        return decode_bytes(self._read(path)), label

    @abc.abstractmethod
    def _read(self, path: str) -> bytes:
        """The raw bytes of one listed file (folder, zip or tar member)."""


class FolderSource(FileSource):
    kind = "folder"

    def __init__(self, name: str, root: Path):
        self.root = root
        entries, dirs, unreadable = [], [], []
        # followlinks: class folders are often symlinks into a shared image store (as ImageFolder does)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root).as_posix()
            if rel != ".":
                dirs.append(rel)
            for fn in filenames:
                relpath = fn if rel == "." else f"{rel}/{fn}"
                try:
                    st = (Path(dirpath) / fn).stat()
                except OSError as exc:  # a dangling link, a file that vanished
                    if _visible(relpath):
                        unreadable.append((relpath, f"unreadable: {exc.strerror or exc}"))
                    continue
                entries.append(Entry(relpath, st.st_size, st.st_mtime))
        listing = list_tree(entries, dirs)
        listing.skipped = sorted(listing.skipped + unreadable)
        super().__init__(name, listing, fingerprint_entries(self.kind, entries))

    def _read(self, path: str) -> bytes:
        try:
            return (self.root / path).read_bytes()
        except OSError as exc:
            raise SkipImage(f"unreadable: {exc.strerror or exc}") from None


class ZipSource(FileSource):
    kind = "zip"

    def __init__(self, name: str, path: Path):
        self.path = path
        self._zip = None
        self._pid = None
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"cannot open zip archive {path}: {exc}") from None
        entries = [Entry(i.filename, i.file_size, _zip_mtime(i)) for i in infos if not i.is_dir()]
        dirs = [i.filename.rstrip("/") for i in infos if i.is_dir()]
        dirs += [str(PurePosixPath(e.path).parent) for e in entries]
        super().__init__(name, list_tree(entries, dirs), fingerprint_entries(self.kind, entries))

    def __getstate__(self):
        return {**self.__dict__, "_zip": None, "_pid": None}

    def _read(self, path: str) -> bytes:
        # One handle per process: a handle inherited through fork shares its file offset.
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        try:
            return self._zip.read(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise SkipImage(f"unreadable zip member: {exc}") from None


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    y, mo, d, h, mi, s = info.date_time
    return float(((((y * 12 + mo) * 31 + d) * 24 + h) * 60 + mi) * 60 + s)


class TarSource(FileSource):
    """Members are read by offset (os.pread: safe from any process). A compressed tar is first
    unpacked once into one scratch blob, since compressed streams cannot be read at random."""

    kind = "tar"

    def __init__(self, name: str, path: Path, scratch: Path):
        self.offsets: dict[str, tuple[int, int]] = {}
        try:
            compressed = _is_compressed(path)
            self.blob = scratch / "source.blob" if compressed else path
            entries, dirs = self._index(path, compressed)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"cannot read tar archive {path}: {exc}") from None
        super().__init__(name, list_tree(entries, dirs), fingerprint_entries(self.kind, entries))

    def _index(self, path: Path, compressed: bool) -> tuple[list[Entry], list[str]]:
        entries, dirs = [], []
        blob = None
        if compressed:
            self.blob.parent.mkdir(parents=True, exist_ok=True)
            blob = open(self.blob, "wb")
        try:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    if m.isdir():
                        dirs.append(m.name.rstrip("/"))
                    if not m.isfile():
                        continue
                    offset = m.offset_data
                    if blob is not None:
                        offset = blob.tell()
                        shutil.copyfileobj(tf.extractfile(m), blob)
                    self.offsets[m.name] = (offset, m.size)
                    entries.append(Entry(m.name, m.size, m.mtime))
                    dirs.append(str(PurePosixPath(m.name).parent))
        finally:
            if blob is not None:
                blob.close()
        return entries, dirs

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


def _is_compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    # gzip, bzip2, xz, zstd magic numbers
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[:4] == b"\x28\xb5\x2f\xfd"


class GeneratorSource:
    """An embedded procedural dataset (dataprep.synthetic): images rendered on the fly."""

    kind = "generator"

    def __init__(self, gen, seed: int):
        self.gen = gen
        self.name = gen.name
        self.classes = list(gen.classes)
        self.skipped: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        # Generated images are a function of the generator's parameters and code version only.
        params = getattr(gen, "settings", None) or {
            "generator": gen.name, "version": str(getattr(gen, "version", "0")), "seed": seed,
            "num_images": len(gen), "image_size": getattr(gen, "image_size", None)}
        self.fingerprint = {"kind": self.kind, **params}

    def __len__(self) -> int:
        return len(self.gen)

    def key(self, i: int) -> str:
        return f"{self.name}/{i:07d}"

    def load(self, i: int) -> tuple[Decoded, int]:
        pixels, label = self.gen.render(i)
        return Decoded(pixels), int(label)


def open_source(dataset: str, src, *, num_images=None, image_size=None, seed=0, scratch: Path):
    """--src wins when given; otherwise --dataset must name an embedded generator."""
    if src is None:
        return _embedded(dataset, num_images, image_size, seed)
    path = Path(src).expanduser()
    if not path.exists():
        raise UserError(f"--src {src}: no such file or folder")
    if path.is_dir():
        return FolderSource(dataset, path)
    if zipfile.is_zipfile(path):
        return ZipSource(dataset, path)
    if tarfile.is_tarfile(path):
        return TarSource(dataset, path, scratch)
    raise UserError(f"--src {src}: not a folder, .zip or .tar archive")


def _embedded(dataset: str, num_images, image_size, seed: int):
    try:
        from dataprep import synthetic
    except ImportError:
        synthetic = None
    embedded = synthetic.EMBEDDED if synthetic else ("sat", "natural")
    if dataset not in embedded:
        raise UserError(
            f"unknown --dataset {dataset!r} without --src: embedded datasets are "
            f"{', '.join(embedded)}; for your own images pass --src DIR|ARCHIVE"
        )
    if synthetic is None:
        raise UserError(f"--dataset {dataset}: the embedded generators are missing (dataprep.synthetic)")
    gen = synthetic.get_generator(dataset, num_images=num_images, image_size=image_size, seed=seed)
    return GeneratorSource(gen, seed)
