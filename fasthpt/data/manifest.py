"""`manifest.json`: the contract between `fasthpt prep` (writer) and the loaders (readers).

Written last, atomically, by dataprep: a dataset folder without it is incomplete. Keys read here:
- ``name``, ``classes`` (list of class names; label i is classes[i])
- ``splits``: {"train": {"count": int, "per_class": [int, ...]}, "val": {...}, "test": {...}}
  (a split that holds no image is absent: --val-frac 0, --test-frac 0, no test.txt in --splits)
- ``mean``, ``std``: per-channel RGB statistics of the training images in 0..255 pixel units
- ``formats``: subset of ["ffcv", "wds"]
- ``files``: {"ffcv": {"train": "ffcv/train.beton", "val": ...},
              "wds": {"train": ["wds/train-000000.tar", ...], "val": [...]}} (relative paths);
  each shard ``X.tar`` has its DALI index ``X.idx`` beside it.
Everything else (settings, fingerprint, skipped files, versions, timing) is informational.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fasthpt.errors import UserError

MANIFEST = "manifest.json"
# The first manifest schema of `fasthpt prep` with a test split (dataprep/manifest.py SCHEMA_VERSION).
TEST_SPLIT_SCHEMA = 3


@dataclass
class Manifest:
    root: Path
    raw: dict

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def classes(self) -> list[str]:
        return list(self.raw["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.raw["classes"])

    @property
    def mean(self) -> list[float]:
        return [float(v) for v in self.raw["mean"]]

    @property
    def std(self) -> list[float]:
        return [float(v) for v in self.raw["std"]]

    @property
    def formats(self) -> list[str]:
        return list(self.raw.get("formats", []))

    def count(self, split: str) -> int:
        self._check_split(split)
        return int(self.raw["splits"][split]["count"])

    def ffcv_path(self, split: str) -> Path:
        self._check_format("ffcv")
        self._check_split(split)
        return self.root / self.raw["files"]["ffcv"][split]

    def wds_shards(self, split: str) -> list[Path]:
        self._check_format("wds")
        self._check_split(split)
        return [self.root / p for p in self.raw["files"]["wds"][split]]

    def _check_split(self, split: str) -> None:
        if split in self.raw["splits"]:
            return
        if split == "test":
            reason, fix = self._why_no_test()
            raise UserError(f"{self.root} has no test split ({reason}): re-run `fasthpt prep "
                            f"--dataset {self.raw.get('name', 'NAME')} ... {fix}`")
        raise UserError(f"{self.root}: no split {split!r}; has {sorted(self.raw['splits'])}")

    def _why_no_test(self) -> tuple[str, str]:
        """Why a prepared folder has no test split, and the prep flags that make one."""
        settings = self.raw.get("settings") or {}
        schema = self.raw.get("schema")
        if not isinstance(schema, int) or schema < TEST_SPLIT_SCHEMA:
            return "prepared by an older fasthpt", "--force"
        if isinstance(settings.get("split_source"), dict):
            return "its --splits lists name no test image: DIR/test.txt", "--splits DIR --force"
        if not settings.get("test_frac"):
            return "prepared with --test-frac 0", "--test-frac 0.2 --force"
        too_few = f"--test-frac {settings['test_frac']} left no image: too few per class"
        return too_few, "--test-frac F --force"

    def _check_format(self, fmt: str) -> None:
        if fmt not in self.formats:
            raise UserError(
                f"{self.root}: no {fmt} files (prepared formats: {', '.join(self.formats) or 'none'});"
                f" re-run `fasthpt prep` with --formats including {fmt}"
            )


def load_manifest(data_dir: str | Path) -> Manifest:
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root} (create it with `fasthpt prep`)")
    path = root / MANIFEST
    if not path.is_file():
        raise UserError(f"{root} has no {MANIFEST}: not a complete `fasthpt prep` output")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    return Manifest(root=root, raw=raw)
