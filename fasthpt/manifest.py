"""`manifest.json`: the contract between `fasthpt prep` (the writer, dataprep) and its readers (the
loaders, evaluation, export, embed). This module is the one place that knows its fields.

Written last, atomically, by dataprep: a dataset folder without it is incomplete. Fields read here
(checked when loaded: a wrong type is one line naming the field):
- ``schema`` (int, SCHEMA_VERSION), ``name``, ``classes`` (list of class names; label i is classes[i])
- ``splits``: {"train": {"count": int, "per_class": [int, ...]}, "val": {...}, "test": {...}}
  (a split that holds no image is absent: --val-frac 0, --test-frac 0, no test.txt in --splits)
- ``mean``, ``std``: per-band statistics of the training images, in stored units (0..255 for JPEG
  datasets, R, G, B), one value per band
- ``image_format`` ("jpeg" | "raster"), ``bands``, ``dtype``, ``band_names``, ``value_range``,
  ``percentiles``, ``scaling`` (schema 4; absent in older manifests, which are JPEG datasets:
  read as "jpeg", 3 bands, "uint8"). How rasters are stored: dataprep/rasters.py.
- ``formats``: subset of FORMATS
- ``files``: {"ffcv": {"train": "ffcv/train.beton", "val": ...},
              "wds": {"train": ["wds/train-000000.tar", ...], "val": [...]},
              "samples": {"train": "samples/train.jsonl", ...}} (paths relative to the folder);
  each shard ``X.tar`` has its DALI index ``X.idx`` beside it.
- ``settings``: the prep settings (val_frac, test_frac, split_source, seed, ...), ``fingerprint``.
Everything else (storage, skipped files, excluded images, warnings, versions, timing) is
informational: dataprep writes it, readers show it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from fasthpt.errors import UserError
from fasthpt.fileio import atomic_write_json
from fasthpt.raster_format import CODES

MANIFEST = "manifest.json"
# 2: the sample-to-file lists are samples/<split>.jsonl (were .txt, one name per line).
# 3: a test split (--test-frac, or the user's lists: --splits); settings.test_frac, .split_source;
#    "excluded" (images no list names). Readers tell an older folder by its missing test split.
# 4: rasters (image_format, bands, dtype, band_names, value_range, percentiles, scaling); mean/std
#    hold one value per band. Schema 3 manifests are read as JPEG datasets of 3 bands.
SCHEMA_VERSION = 4
TEST_SPLIT_SCHEMA = 3  # the first schema with a test split
FORMATS = ("ffcv", "wds")
SPLITS = ("train", "val", "test")
IMAGE_FORMATS = ("jpeg", "raster")
# The only transform between stored values and the network (dataprep writes it into every manifest).
SCALING = "standardise per band: (x - mean[c]) / std[c]"


@dataclass(frozen=True)
class Split:
    count: int
    per_class: tuple[int, ...] | None  # None where the manifest does not record it


@dataclass
class Manifest:
    root: Path
    raw: dict  # the JSON object as read (checked by load_manifest); read it through the accessors

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def schema(self) -> int | None:
        schema = self.raw.get("schema")
        return schema if isinstance(schema, int) else None

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
    def image_format(self) -> str:
        """"jpeg" (8-bit RGB JPEG bytes, today's path) or "raster" (dataprep/rasters.py)."""
        return self.raw.get("image_format", "jpeg")

    @property
    def is_raster(self) -> bool:
        return self.image_format == "raster"

    @property
    def bands(self) -> int:
        return int(self.raw.get("bands", 3))

    @property
    def dtype(self) -> str:
        """The stored numpy dtype name ("uint8" for JPEG datasets)."""
        return self.raw.get("dtype", "uint8")

    @property
    def band_names(self) -> list[str] | None:
        names = self.raw.get("band_names")
        return None if names is None else list(names)

    @property
    def value_range(self) -> list[list[float]] | None:
        """[min, max] per band over the train split (rasters; None for JPEG datasets)."""
        return self.raw.get("value_range")

    @property
    def percentiles(self) -> list[list[float]] | None:
        """[p0.1, p99.9] per band over the train split (rasters; None for JPEG datasets)."""
        return self.raw.get("percentiles")

    @property
    def scaling(self) -> str:
        """What loaders do with stored values: the one rule, for every dataset and backend."""
        return self.raw.get("scaling", SCALING)

    @property
    def formats(self) -> list[str]:
        return list(self.raw.get("formats", []))

    @property
    def settings(self) -> dict:
        return dict(self.raw.get("settings") or {})

    @property
    def split_names(self) -> list[str]:
        """The splits this folder holds (each with at least one image), in the manifest's order."""
        return list(self.raw["splits"])

    def split(self, split: str) -> Split:
        self._check_split(split)
        entry = self.raw["splits"][split]
        per_class = entry.get("per_class")
        return Split(int(entry["count"]), None if per_class is None else tuple(int(n) for n in per_class))

    def count(self, split: str) -> int:
        return self.split(split).count

    def per_class(self, split: str) -> list[int]:
        per_class = self.split(split).per_class
        if per_class is None:
            raise UserError(f"{self.root / MANIFEST} lacks splits.{split}.per_class; re-run `fasthpt prep`")
        return list(per_class)

    def ffcv_path(self, split: str) -> Path:
        self._check_format("ffcv")
        self._check_split(split)
        return self.root / self.raw["files"]["ffcv"][split]

    def wds_shards(self, split: str) -> list[Path]:
        self._check_format("wds")
        self._check_split(split)
        return [self.root / p for p in self.raw["files"]["wds"][split]]

    def samples_path(self, split: str) -> Path:
        """samples/<split>.jsonl: which source file became each sample of the split."""
        rel = (self.raw.get("files") or {}).get("samples", {}).get(split)
        if not isinstance(rel, str) or not rel.endswith(".jsonl"):
            raise UserError(f"{self.root}: no samples/{split}.jsonl (written by an older `fasthpt prep`?); "
                            "rebuild it with `fasthpt prep --force`")
        return self.root / rel

    def sample_names(self, split: str) -> list[tuple[str, int]]:
        """(source path as shown, label) of each sample of ``split``, in sample-index order, read from
        samples/<split>.jsonl (dataprep.samples writes it; a name that is not UTF-8 shows in its
        display form, which is what a user's list can name)."""
        path = self.samples_path(split)
        try:
            with open(path, encoding="utf-8") as f:
                return [(rec["path"], int(rec["label"])) for rec in map(json.loads, f)]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is unreadable ({exc}); rebuild it with `fasthpt prep --force`") from None

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
        settings = self.settings
        if self.schema is None or self.schema < TEST_SPLIT_SCHEMA:
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


def problem(raw) -> str | None:
    """What makes ``raw`` unreadable as a manifest (the first thing found), or None."""
    if not isinstance(raw, dict):
        return "not a JSON object"
    schema = raw.get("schema")  # absent in the first manifests
    if schema is not None and (not isinstance(schema, int) or isinstance(schema, bool) or schema < 1):
        return "'schema' is not a version number"
    for key, kind in (("name", str), ("classes", list), ("splits", dict), ("mean", list), ("std", list)):
        if not isinstance(raw.get(key), kind):
            return f"{key!r} missing or not a JSON {'string' if kind is str else kind.__name__}"
    if not all(isinstance(c, str) for c in raw["classes"]):
        return "'classes' holds a name that is not a string"
    wrong = _image_problem(raw)
    if wrong:
        return wrong
    for split, entry in raw["splits"].items():
        if not isinstance(entry, dict) or not _count(entry.get("count")):
            return f"splits.{split}.count missing or not a count"
        per_class = entry.get("per_class")
        if per_class is not None and not (isinstance(per_class, list) and len(per_class) == len(raw["classes"])
                                          and all(_count(n) for n in per_class)):
            return f"splits.{split}.per_class is not one count per class"
        if per_class is not None and sum(per_class) != entry["count"]:
            return f"splits.{split}.per_class adds up to {sum(per_class)}, not its count {entry['count']}"
    for key, kind in (("formats", list), ("files", dict), ("settings", dict)):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            return f"{key!r} is not a JSON {kind.__name__}"
    return None


def _image_problem(raw: dict) -> str | None:
    """The image fields (schema 4; defaults for older manifests): one statistic per band."""
    fmt, bands, dtype = raw.get("image_format", "jpeg"), raw.get("bands", 3), raw.get("dtype", "uint8")
    if fmt not in IMAGE_FORMATS:
        return f"'image_format' is {fmt!r}, not one of {', '.join(IMAGE_FORMATS)}"
    if not _count(bands) or bands < 1 or (fmt == "jpeg" and bands != 3):
        return f"'bands' is {bands!r}: not a band count (3 for JPEG datasets)"
    if dtype not in CODES or (fmt == "jpeg" and dtype != "uint8"):
        return f"'dtype' is {dtype!r}: not one of {', '.join(CODES)} (uint8 for JPEG datasets)"
    for key in ("mean", "std"):
        if len(raw[key]) != bands or not all(_number(v) for v in raw[key]):
            return f"{key!r} is not {bands} numbers (one per band)"
    names = raw.get("band_names")
    if names is not None and not (isinstance(names, list) and len(names) == bands
                                  and all(isinstance(n, str) for n in names)):
        return f"'band_names' is not null or {bands} names"
    for key in ("value_range", "percentiles"):
        pairs = raw.get(key)
        if pairs is not None and not (isinstance(pairs, list) and len(pairs) == bands and all(
                isinstance(p, list) and len(p) == 2 and all(_number(v) for v in p) for p in pairs)):
            return f"{key!r} is not null or {bands} [low, high] pairs"
    return None


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_manifest(data_dir: str | Path) -> Manifest:
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root} (create it with `fasthpt prep`)")
    path = root / MANIFEST
    if not path.is_file():
        raise UserError(f"{root} has no {MANIFEST}: not a complete `fasthpt prep` output")
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:  # json.JSONDecodeError, or bytes that are not UTF-8 (UnicodeDecodeError)
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    wrong = problem(raw)
    if wrong:
        raise UserError(f"{path} is not a `fasthpt prep` manifest ({wrong}); re-run `fasthpt prep ... --force`")
    if (raw.get("schema") or 0) > SCHEMA_VERSION:  # its fields may mean what this version cannot know
        raise UserError(f"{path} has manifest schema {raw['schema']}, written by a newer fasthpt; this version reads "
                        f"schemas up to {SCHEMA_VERSION}: upgrade fasthpt, or re-run `fasthpt prep ... --force` with "
                        "this one")
    return Manifest(root=root, raw=raw)


def read_raw(folder: Path) -> dict | None:
    """The manifest in ``folder`` as a dict, unchecked (any JSON), or None when absent or unreadable."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_manifest(folder: Path, raw: dict) -> Path:
    """Write folder/manifest.json atomically (temporary name, fsync, rename); refuses what
    load_manifest would refuse, so that the writer cannot drift from the readers."""
    wrong = problem(raw)
    if wrong:
        raise ValueError(f"manifest for {folder}: {wrong}")
    return atomic_write_json(Path(folder) / MANIFEST, raw)
