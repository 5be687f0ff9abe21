"""Where images come from: a folder-per-class tree (plain, .zip or .tar) or an embedded generator.

Every source exposes the same small interface, used by the parent (listing) and by the worker
processes (loading one item):
    .name, .classes, .fingerprint (dict), .skipped [(path, reason)], .warnings [str]
    len(src), src.key(i) -> str (a path-like id), src.load(i) -> (Decoded | Raster, label)
`load` raises convert.SkipImage for a file that is not a usable image; 8-bit images come back as
convert.Decoded, anything else as raster_read.Raster. Only regular files are ever
opened (a FIFO blocks its reader forever, a device never ends). Class names, skipped paths and
warnings are display_name()s; key(i) is the exact name (bytes that are not UTF-8 are kept as lone
surrogates, as os.listdir and tarfile give them: PEP 383).
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dataprep.convert import Decoded, SkipImage
from dataprep.raster_read import Header, Raster, as_image, decode, kind_of
from fasthpt.errors import UserError

# Suffixes used only to find the class-folder level of a tree; files are identified by content.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".npy"}
_IGNORED_DIRS = {"__MACOSX"}  # resource forks that macOS adds to zip files
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FILE_KINDS = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
               stat.S_IFBLK: "block device", stat.S_IFLNK: "symbolic link", stat.S_IFDIR: "folder"}
UNSAFE_PATH = "unsafe path (absolute or with '..')"


def display_name(text: str) -> str:
    """`text` as one printable line: bytes that are not UTF-8 become \\xNN and control characters
    are escaped, so a file name can neither crash an encoder (JSON readers, a strict stdout) nor
    split a one-line message or send escape sequences to a terminal."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file system produced
        raw = text.encode("utf-8", "backslashreplace")
    safe = raw.decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), safe)


def not_regular(mode: int) -> str | None:
    """None for a regular file, else the reason to skip it (what kind of file it is)."""
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFREG:
        return None
    return f"not a regular file ({_FILE_KINDS.get(kind, f'type {kind:o}')})"


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
    outside: list[str] = field(default_factory=list)  # exact paths of files outside class folders


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


def _safe(path: str) -> bool:
    """An archive can name a member '/etc/x.jpg' or '../x.jpg': such a name is no place inside the
    dataset (it would make an odd class or, hidden by its '..', vanish), so it is skipped."""
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts


def _screen(entries: list[Entry], rejected) -> tuple[list[Entry], list[tuple[str, str]]]:
    """The entries that may become samples, and (path, reason) for the others. Hidden files are
    ignored without a word; a name held twice by an archive keeps its last copy (what extracting
    it would leave on disk)."""
    skipped = [(p, r if _safe(p) else UNSAFE_PATH) for p, r in rejected if not _safe(p) or _visible(p)]
    last = {e.path: k for k, e in enumerate(entries)}
    kept = []
    for k, e in enumerate(entries):
        if not _safe(e.path):
            skipped.append((e.path, UNSAFE_PATH))
        elif not _visible(e.path):
            continue
        elif last[e.path] != k:
            skipped.append((e.path, "duplicate name in the archive (its last copy is used)"))
        else:
            kept.append(e)
    return kept, skipped


def list_tree(entries: list[Entry], dirs: list[str], rejected=(), class_depth: int | None = None) -> Listing:
    """Assign class labels from the folder structure: the class is the folder path below the
    shared root, or its first ``class_depth`` folders (CLASS/PATIENT/x.png: 1 takes CLASS).
    rejected: (path, reason) of files the source already knows it cannot use (listed as skipped)."""
    entries, skipped = _screen(entries, rejected)
    images = [e.path for e in entries if PurePosixPath(e.path).suffix.lower() in IMAGE_SUFFIXES]
    root = _class_root(images or [e.path for e in entries])
    by_class: dict[str, list[str]] = {}
    outside = []
    for e in sorted(entries, key=lambda e: e.path):
        parts = PurePosixPath(e.path).parts
        if parts[: len(root)] != root or len(parts) <= len(root) + 1:
            skipped.append((e.path, "not inside a class folder"))
            outside.append(e.path)
            continue
        folders = parts[len(root) : -1]
        by_class.setdefault("/".join(folders[:class_depth]), []).append(e.path)
    classes = sorted(by_class)
    label = {c: i for i, c in enumerate(classes)}
    items = sorted((p, label[c]) for c, ps in by_class.items() for p in ps)
    warnings = [f"empty class folder ignored: {d}" for d in _empty_class_dirs(dirs, root, classes)]
    warnings += _nesting_note(classes, class_depth)
    return Listing([display_name(c) for c in classes], items,
                   [(display_name(p), display_name(r)) for p, r in sorted(skipped)],
                   [display_name(w) for w in warnings], outside)


def _nesting_note(classes: list[str], class_depth: int | None) -> list[str]:
    """What was taken as a class when image folders nest (medical layouts: CLASS/PATIENT/*.png),
    and the choice: without --class-depth each whole folder path is a class."""
    depth = max((c.count("/") + 1 for c in classes), default=1)
    if class_depth is not None or depth < 2:
        return []
    first = sorted({c.split("/")[0] for c in classes})
    shown = ", ".join(first[:6]) + (", ..." if len(first) > 6 else "")
    return [f"image folders nest up to {depth} levels: each folder path is a class ({len(classes)} classes, e.g. "
            f"{classes[0]!r}); --class-depth 1 takes the first level as the class instead ({len(first)} classes: "
            f"{shown})"]


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
        # surrogateescape: a name that is not UTF-8 hashes as its own bytes
        h.update(f"{e.path}\0{e.size}\0{int(e.mtime)}\n".encode("utf-8", "surrogateescape"))
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
        self.outside = listing.outside
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.items)

    def key(self, i: int) -> str:
        return self.items[i][0]

    def load(self, i: int) -> tuple[Decoded | Raster, int]:
        path, label = self.items[i]
        return decode(self._read(path)), label

    def header(self, i: int) -> Header | None:
        """What file i holds, from its header alone (None: unreadable; load() says why)."""
        try:
            return kind_of(self._read(self.items[i][0]))
        except SkipImage:
            return None

    @abc.abstractmethod
    def _read(self, path: str) -> bytes:
        """The raw bytes of one listed file (folder, zip or tar member)."""


class FolderSource(FileSource):
    kind = "folder"

    def __init__(self, name: str, root: Path, class_depth: int | None = None):
        self.root = root
        try:
            os.listdir(root)
        except OSError as exc:
            raise UserError(f"--src {display_name(str(root))}: cannot read the folder ({exc.strerror})") from None
        entries, dirs, rejected = _walk(root)
        super().__init__(name, list_tree(entries, dirs, rejected, class_depth), fingerprint_entries(self.kind, entries))

    def _read(self, path: str) -> bytes:
        try:
            # O_NONBLOCK: were the listed file replaced by a FIFO since, opening it must not block.
            with open(os.open(self.root / path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                reason = not_regular(os.fstat(f.fileno()).st_mode)
                if reason is None:
                    return f.read()
        except OSError as exc:
            raise SkipImage(f"unreadable: {exc.strerror or exc}") from None
        raise SkipImage(reason)


def _walk(root: Path) -> tuple[list[Entry], list[str], list[tuple[str, str]]]:
    """(regular files, folders, (path, reason) of what cannot be read) below root. Nothing is
    opened here: a FIFO, socket or device is only stat()ed and rejected."""
    entries, dirs, rejected = [], [], []
    above = {str(root): {_identity(root)}}

    def unreadable(exc: OSError) -> None:
        rejected.append((_relative(exc.filename, root), f"unreadable folder: {exc.strerror}"))

    # followlinks: class folders are often symlinks into a shared image store (as ImageFolder does)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        rel = _relative(dirpath, root)
        if rel != ".":
            dirs.append(rel)
        dirnames[:] = _subfolders(dirpath, sorted(dirnames), above, rejected, root)
        for fn in filenames:
            relpath = fn if rel == "." else f"{rel}/{fn}"
            try:
                st = os.stat(os.path.join(dirpath, fn))
            except OSError as exc:  # a dangling link, a file that vanished
                rejected.append((relpath, f"unreadable: {exc.strerror or exc}"))
                continue
            reason = not_regular(st.st_mode)
            if reason is None:
                entries.append(Entry(relpath, st.st_size, st.st_mtime))
            else:
                rejected.append((relpath, reason))
    return entries, dirs, rejected


def _subfolders(dirpath: str, names: list[str], above: dict, rejected: list, root: Path) -> list[str]:
    """The sub-folders of dirpath to walk into. A link to dirpath itself or to a folder above it is
    not entered: os.walk(followlinks=True) would otherwise go round until the path is too long."""
    chain = above.pop(dirpath)
    keep = []
    for name in names:
        path = os.path.join(dirpath, name)
        try:
            ident = _identity(path)
        except OSError:
            keep.append(name)  # os.walk reports it through onerror
            continue
        if ident in chain:
            rejected.append((_relative(path, root), "symlink loop (links to a folder above it), not entered"))
        else:
            above[path] = chain | {ident}
            keep.append(name)
    return keep


def _identity(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _relative(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


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

    def load(self, i: int) -> tuple[Decoded | Raster, int]:
        pixels, label = self.gen.render(i)
        return as_image(pixels, getattr(self.gen, "band_names", None)), int(label)
