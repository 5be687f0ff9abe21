"""The K labelled images of fine-tuning named by a list file, as the authors give theirs.

Format: OpenSelfSup's ImageList, the lists of cjrd/self-supervised-pretraining (their fine-tuning
configs read e.g. data/resisc45/meta/train-labeled-1000.txt and data/ucmerced/meta/
train_labeled-1000.txt; utils/raw-tf-splits/*/create-class-data-lists.py writes the format): one
image per line, its path below their data root and its integer label, e.g.
"all/airport/airport_001.jpg 1" (RESISC-45) or "Images/beach/beach01.tif 4" (UC Merced). The label
column may be absent; blank lines and lines starting with '#' are skipped.

A listed path names the train sample (samples/train.jsonl of the prepared folder: the source path
of each sample index) whose source path is that path, ends with it, or is how the listed path ends (their
"all/airport/airport_001.jpg" is the sample "airport/airport_001.jpg" of `fasthpt prep --src
NWPU-RESISC45`), in whole path components. Each listed path must name exactly one train image, once;
the list's labels (when given) must follow the data's classes one to one (the numbering may
differ). Anything else is refused in one line that counts the problems and shows a few.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fasthpt.errors import UserError

_LABEL = re.compile(r"^(.*\S)\s+(-?\d+)$")
_SHOWN = 3  # examples named in an error line


@dataclass
class LabelList:
    path: Path
    sha256: str
    entries: list[tuple[int, str, int | None]]  # (line number, path, label or None)


def read_label_list(path) -> LabelList:
    """Parse ``path``; UserError (one line) for a missing, unreadable, non-text or empty file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"--labels-file {path}: no such file") from None
    except OSError as exc:
        raise UserError(f"--labels-file {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise UserError(f"--labels-file {path}: not a UTF-8 text file") from None
    entries = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LABEL.match(line)
        name, label = (match[1], int(match[2])) if match else (line, None)
        entries.append((number, name.removeprefix("./"), label))
    if not entries:
        raise UserError(f"--labels-file {path}: lists no images")
    return LabelList(path, hashlib.sha256(data).hexdigest(), entries)


def _index(paths: list[str]) -> dict[str, list[tuple[int, bool]]]:
    """Every trailing part of every path (whole components) -> [(sample index, whether it is the whole path)]."""
    index: dict[str, list[tuple[int, bool]]] = {}
    for i, p in enumerate(paths):
        parts = p.split("/")
        for k in range(len(parts)):
            index.setdefault("/".join(parts[k:]), []).append((i, k == 0))
    return index


def match(listed: str, index: dict) -> list[int]:
    """Sample indices ``listed`` names: those whose path ends with it, else the one whose whole path
    is the longest trailing part of it."""
    if listed in index:
        return [i for i, _ in index[listed]]
    parts = listed.split("/")
    for k in range(1, len(parts)):
        whole = [i for i, full in index.get("/".join(parts[k:]), []) if full]
        if whole:
            return whole
    return []


def list_indices(labels: LabelList, samples: dict[str, list[tuple[str, int]]]) -> torch.Tensor:
    """Sample indices of the train split that ``labels`` names, in list order. ``samples``: split ->
    [(source path, label)] (fasthpt.manifest.Manifest.sample_names) for train and, to say where a missing
    entry is instead, any other split."""
    train = samples["train"]
    index = _index([p for p, _ in train])
    others = {s: _index([p for p, _ in rows]) for s, rows in samples.items() if s != "train"}
    picked, owner, problems = [], {}, {"missing": [], "ambiguous": [], "twice": []}
    for number, listed, _ in labels.entries:
        hits = match(listed, index)
        where = f"line {number} {listed}"
        if not hits:
            found = [s for s, other in others.items() if match(listed, other)]
            problems["missing"].append(where + (f" (in {found[0]})" if found else ""))
        elif len(hits) > 1:
            problems["ambiguous"].append(f"{where}: {train[hits[0]][0]}, {train[hits[1]][0]}")
        elif hits[0] in owner:
            problems["twice"].append(f"{where} (also line {owner[hits[0]]})")
        else:
            owner[hits[0]] = number
            picked.append(hits[0])
    name = f"--labels-file {labels.path}"
    _refuse(name, problems["missing"], "entries are not images of the train split",
            "list train images only, by their path (or its end, as the authors' lists name them)")
    _refuse(name, problems["ambiguous"], "entries name more than one train image", "give more of the path")
    _refuse(name, problems["twice"], "images are listed more than once", "list each image once")
    _check_labels(name, labels, [train[i][1] for i in picked])
    return torch.tensor(picked, dtype=torch.long)


def _check_labels(name: str, labels: LabelList, data_labels: list[int]) -> None:
    """The list's label column, where given, must map one to one onto the data's labels."""
    forward, backward = {}, {}
    for (number, listed, given), got in zip(labels.entries, data_labels):
        if given is None:
            continue
        if forward.setdefault(given, got) != got or backward.setdefault(got, given) != given:
            raise UserError(f"{name}: its labels do not follow the data's classes (line {number} {listed}: label "
                            f"{given}; the list's labels and the data's classes must correspond one to one)")


def _refuse(name: str, problems: list[str], what: str, hint: str) -> None:
    if problems:
        raise UserError(f"{name}: {len(problems)} {what} (e.g. {'; '.join(problems[:_SHOWN])}); {hint}")
