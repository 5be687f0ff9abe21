"""samples/<split>.jsonl: which source file became sample j of a split (the same order in every format).

One JSON object per line, {"path": "forest/001.jpg", "label": 3}: JSON escapes every character, so
no file name (one holding a newline, say) can shift the list, as it could in a list of one name per
line. A name that is not UTF-8 (a Unix file system allows any bytes but '/' and NUL) cannot be a
JSON string as such: "path" then holds its display form and "path_b64" its exact bytes (base64).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from dataprep.sources import display_name
from fasthpt.manifest import load_manifest


def record(name: str, label: int) -> dict:
    """The line for source file `name` (as os.listdir or tarfile gives it) with label `label`."""
    try:
        name.encode("utf-8")
        return {"path": name, "label": int(label)}
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept as lone surrogates (PEP 383)
        exact = base64.b64encode(os.fsencode(name)).decode("ascii")
        return {"path": display_name(name), "path_b64": exact, "label": int(label)}


def write_samples(path: Path, names: list[str], labels: list[int]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for name, label in zip(names, labels, strict=True):
            f.write(json.dumps(record(name, label), ensure_ascii=False) + "\n")


def read_samples(data_dir, split: str) -> list[tuple[str, int]]:
    """(source path relative to --src, label) of every sample of `split`, in stored order; the
    path is the exact name (os.fsdecode of its bytes), ready to join to the source folder."""
    with open(load_manifest(data_dir).samples_path(split), encoding="utf-8") as f:
        return [_path_and_label(json.loads(line)) for line in f]


def _path_and_label(rec: dict) -> tuple[str, int]:
    if "path_b64" in rec:
        return os.fsdecode(base64.b64decode(rec["path_b64"])), int(rec["label"])
    return rec["path"], int(rec["label"])
