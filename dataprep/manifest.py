"""Build manifest.json from a conversion pass, and recognise an output folder as prep's own.

The fields, their checks, reading and the atomic write are fasthpt.manifest's (the schema every
reader shares); this module adds what only the writer knows: how a request is compared with an
existing output, which files an output accounts for, and the informational fields (storage,
skipped files, warnings, library versions, timing).
"""

from __future__ import annotations

import math
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from fasthpt.feature_cache import is_cache_path
from fasthpt.manifest import MANIFEST, SCALING, SCHEMA_VERSION, read_raw, write_manifest

__all__ = ["PixelStats", "build_manifest", "foreign_files", "is_prep_manifest", "read_raw", "request_differences",
           "request_of", "write_manifest"]

# Keys every manifest written by `fasthpt prep` holds: how an output folder is recognised as its own.
PREP_KEYS = ("schema", "name", "classes", "splits", "files", "settings", "fingerprint")
# Settings that change the bytes written; a re-run that differs in any of these must not be
# mistaken for a no-op. (--workers, the spelling of --src and --splits and progress do not change
# the output; split_source holds the digests of the --splits lists.)
# num_images / image_size are compared through the generator's fingerprint, which holds the
# resolved values (so `--num-images 2400` equals the default it spells out).
OUTPUT_SETTINGS = ("val_frac", "test_frac", "split_source", "seed", "formats", "max_res", "jpeg_quality",
                   "shard_size", "band_names", "class_depth")
_PACKAGES = ("numpy", "pillow", "opencv-python-headless", "opencv-python", "tifffile", "imagecodecs", "ffcv",
             "webdataset", "nvidia-dali-cuda120", "fasthpt")


class PixelStats:
    """Exact per-channel mean/std over all stored training pixels (integer sums, 0..255 units)."""

    def __init__(self):
        self.count = 0
        self.sums = [0, 0, 0]
        self.sq_sums = [0, 0, 0]

    def add(self, stored) -> None:
        """Add one dataprep.convert.Stored (its exact sums over the pixels as stored)."""
        self.count += stored.pixel_count
        for c in range(3):
            self.sums[c] += stored.sums[c]
            self.sq_sums[c] += stored.sq_sums[c]

    def mean(self) -> list[float]:
        return [s / self.count for s in self.sums]

    def std(self) -> list[float]:
        # Population variance (N*SS - S^2) / N^2, computed on exact integers before the division.
        n = self.count
        return [math.sqrt((n * ss - s * s) / (n * n)) for s, ss in zip(self.sums, self.sq_sums)]

    def fields(self) -> dict:
        """The manifest's statistics (0..255 units, population std over every stored (decoded)
        training pixel); range and percentiles are kept for rasters only."""
        return {"mean": self.mean(), "std": self.std(), "value_range": None, "percentiles": None}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def request_of(settings: dict, fingerprint: dict) -> dict:
    """What determines the output: compared with an existing manifest to detect a no-op re-run."""
    return {"settings": {k: settings.get(k) for k in OUTPUT_SETTINGS}, "fingerprint": fingerprint}


def request_differences(raw: dict, request: dict) -> list[str]:
    """Human-readable list of what differs between an existing manifest and a new request."""
    old_settings = raw.get("settings", {})
    diffs = [
        f"{k} {_shown(old_settings.get(k))} -> {_shown(v)}"
        for k, v in request["settings"].items()
        if _norm(old_settings.get(k)) != _norm(v)
    ]
    old_fp, new_fp = raw.get("fingerprint") or {}, request["fingerprint"]
    if old_fp != new_fp:
        if old_fp.get("kind") == new_fp.get("kind") == "generator":
            diffs += [f"{k} {old_fp.get(k)!r} -> {v!r}" for k, v in new_fp.items() if old_fp.get(k) != v]
        else:
            diffs.append("source contents changed")
    return diffs


def _shown(value) -> str:
    """A setting as the difference line shows it: a list source by its files and digest prefixes."""
    if isinstance(value, dict) and isinstance(value.get("sha256"), dict):
        return "lists(" + ", ".join(f"{n} {h[:12]}" for n, h in value["sha256"].items()) + ")"
    return repr(value)


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def is_prep_manifest(raw) -> bool:
    return isinstance(raw, dict) and all(k in raw for k in PREP_KEYS) and isinstance(raw["files"], dict)


def foreign_files(folder: Path, raw: dict) -> list[str]:
    """Paths under `folder` (a prep output) that its manifest does not account for: what someone
    else put there, which rebuilding the folder must not delete."""
    ours = _written_files(raw)
    folders = {str(Path(p).parent) for p in ours}
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # links are listed, not followed
        rel = Path(dirpath).relative_to(folder)
        found += [(rel / d).as_posix() for d in dirnames if (rel / d).as_posix() not in folders]
        found += [(rel / f).as_posix() for f in filenames if (rel / f).as_posix() not in ours]
    # `fasthpt eval`'s feature cache of this data is the tool's own, and stale once it is rebuilt
    return sorted(p for p in found if not is_cache_path(p))


def _written_files(raw: dict) -> set[str]:
    """manifest.json, every file listed under "files" and the DALI index beside each shard."""
    ours = {MANIFEST}
    for per_split in raw["files"].values():
        for paths in per_split.values() if isinstance(per_split, dict) else ():
            for p in map(str, paths if isinstance(paths, list) else [paths]):
                ours.add(p)
                if p.endswith(".tar"):
                    ours.add(p[: -len(".tar")] + ".idx")
    return ours


def build_manifest(*, source, settings: dict, per_class: dict, image: dict, files: dict,
                   skipped: list, excluded: dict | None, passthrough: int, sizes: dict,
                   timing: dict) -> dict:
    """image: the layout's and the statistics' fields (dataprep/rasters.py: image_format, bands,
    dtype, band_names, mean, std, value_range, percentiles; rasters add "statistics")."""
    splits = {s: {"count": sum(c), "per_class": list(c)} for s, c in per_class.items() if sum(c)}
    if image["image_format"] == "raster":
        storage = {"encoding": "raster", "wds_member": "npy", "ffcv_image_field": "BytesField (raster_format.pack)"}
    else:
        storage = {"encoding": "jpeg", "chroma": "4:4:4", "jpeg_quality": settings["jpeg_quality"],
                   "passthrough_jpegs": passthrough}
    return {
        "schema": SCHEMA_VERSION,
        "name": source.name,
        "classes": list(source.classes),
        "splits": splits,
        **image,
        "scaling": SCALING,
        "formats": [f for f in settings["formats"] if f in files],
        "files": files,
        "storage": {**storage, "max_res": settings["max_res"], **sizes},
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        # --splits: the source images that no list names ({count, per_class, examples}).
        "excluded": excluded or {"count": 0},
        "warnings": list(source.warnings),
        "versions": library_versions(),
        "timing": timing,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
