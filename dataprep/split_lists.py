"""`--splits DIR`: the user's own split lists instead of --val-frac / --test-frac.

DIR holds train.txt and val.txt, and test.txt when there is a test split: one image per line,
named by its path relative to --src (as prep lists it: for an archive, the member name) or by any
trailing part of that path, so the lists HPT's authors used work as they are: TensorFlow Datasets'
RESISC-45 / UC Merced lists name the file alone ("harbor22.tif"), OpenSelfSup's meta files the path
below the data root ("Images/harbor/harbor22.tif 10"); both in github.com/cjrd/self-supervised-
pretraining, utils/raw-tf-splits/ (the lists and create-class-data-lists.py). A path that is
exactly a source path is that image; a shorter one must name a single image (else: give the class
folder too). A trailing integer column (OpenSelfSup's label) is ignored: labels come from the
folders. Blank lines and lines starting with '#' are skipped. Images that no list names are left out, and counted.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dataprep.sources import display_name, not_regular
from fasthpt.errors import UserError

LIST_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
OPTIONAL = ("test",)
_LABEL_COLUMN = re.compile(r"\s+-?\d+$")
_SHOWN = 3  # examples named in an error line


@dataclass
class SplitLists:
    folder: str
    entries: dict[str, list[tuple[str, str]]]  # split -> [(where: "train.txt:5", path)]
    sha256: dict[str, str]  # list file name -> digest of its bytes

    @property
    def source(self) -> dict:
        """What the settings record: the lists' digests (their folder's spelling does not matter)."""
        return {"sha256": dict(self.sha256)}


def read_split_lists(folder) -> SplitLists:
    """Read DIR/{train,val,test}.txt; raises UserError (one line) for a missing or unreadable one."""
    root = Path(folder).expanduser()
    shown = display_name(str(folder))
    if not root.is_dir():
        raise UserError(f"--splits {shown}: {'not a folder' if root.exists() else 'no such folder'}")
    entries, digests = {}, {}
    for split, name in LIST_FILES.items():
        data = _read(root / name, split in OPTIONAL, shown)
        if data is not None:
            digests[name] = hashlib.sha256(data).hexdigest()
            entries[split] = _parse(data, name)
    return SplitLists(str(folder), entries, digests)


def _read(path: Path, optional: bool, shown: str) -> bytes | None:
    try:
        reason = not_regular(os.stat(path).st_mode)  # stat first: opening a FIFO would block
        if reason is None:
            return path.read_bytes()
    except FileNotFoundError:
        if optional:
            return None
        raise UserError(f"--splits {shown}: no {path.name} (the folder needs train.txt and val.txt, "
                        "and test.txt for a test split)") from None
    except OSError as exc:
        raise UserError(f"--splits {shown}: cannot read {path.name} ({exc.strerror or exc})") from None
    raise UserError(f"--splits {shown}: {path.name} is {reason}")


def _parse(data: bytes, name: str) -> list[tuple[str, str]]:
    # surrogateescape: a name that is not UTF-8 reads as os.listdir gives it (PEP 383). Lines are
    # split on "\n" only: str.splitlines would also split at characters a file name may hold.
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    out = []
    for number, line in enumerate(text.split("\n"), 1):
        path = _LABEL_COLUMN.sub("", line.strip())
        while path.startswith("./"):
            path = path[2:]
        if path and not path.startswith("#"):
            out.append((f"{name}:{number}", path))
    return out


def assign_listed(lists: SplitLists, keys: list[str]) -> dict[str, str]:
    """{source path: split} for every source image a list names. Raises UserError when a listed
    path names no image or several, when an image is listed twice, or when train.txt is empty."""
    exact = set(keys)
    by_tail = _tails(keys)
    owner: dict[str, tuple[str, str]] = {}  # source path -> (split, where it is listed)
    unknown, ambiguous, twice = [], [], []
    for split, listed in lists.entries.items():
        for where, path in listed:
            hits = [path] if path in exact else by_tail.get(path, [])
            if not hits:
                unknown.append(f"{where} {display_name(path)}")
            elif len(hits) > 1:
                ambiguous.append(f"{where} {display_name(path)}: {display_name(hits[0])}, "
                                 f"{display_name(hits[1])}")
            elif hits[0] in owner:
                twice.append(f"{display_name(hits[0])}: {owner[hits[0]][1]} and {where}")
            else:
                owner[hits[0]] = (split, where)
    _refuse(lists.folder, unknown, "listed paths are not images in --src",
            "name them relative to --src or to its class folders")
    _refuse(lists.folder, ambiguous, "listed paths name more than one image", "give the class folder too")
    _refuse(lists.folder, twice, "images are listed more than once", "each image belongs to one split")
    if not any(split == "train" for split, _ in owner.values()):
        raise UserError(f"--splits {display_name(lists.folder)}: train.txt lists no images")
    return {key: split for key, (split, _) in owner.items()}


def _tails(keys: list[str]) -> dict[str, list[str]]:
    """Every trailing part of every path ('a/b/c.jpg': 'b/c.jpg', 'c.jpg') -> the paths ending so."""
    index: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split("/")
        for k in range(1, len(parts)):
            index.setdefault("/".join(parts[k:]), []).append(key)
    return index


def _refuse(folder: str, problems: list[str], what: str, hint: str) -> None:
    if problems:
        raise UserError(f"--splits {display_name(folder)}: {len(problems)} {what} (e.g. "
                        f"{'; '.join(problems[:_SHOWN])}); {hint}")
