"""`prepare()`: images -> <out>/<dataset>/{ffcv,wds,samples}/ + manifest.json, atomically.

Flow: refuse an output that overlaps the source -> lock OUT/.DATASET.lock (one prep per output) ->
recognise an existing output by its prep manifest (anything else is never overwritten) -> list the
source -> decide whether the existing output already answers the request -> decode, resize and
encode in worker processes (Pool.imap over chunks, results in order) while the parent writes
shards, routes each sample to train/val/test and sums pixel statistics -> FFCV files from the
shards -> manifest -> one rename of the whole temporary folder into place.
"""

from __future__ import annotations

import errno
import functools
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from dataprep import manifest as mf
from dataprep.convert import Decoded, SkipImage, Stored, store
from dataprep.inputs import open_source
from dataprep.lock import output_lock
from dataprep.raster_read import EIGHT_BIT, Header, Kind, Raster
from dataprep.raster_stats import RasterStats
from dataprep.rasters import Layout, StoredRaster, choose_layout, store_raster
from dataprep.samples import write_samples
from dataprep.sources import display_name
from dataprep.split import ListedSplit, StreamingSplit, shuffled_order
from dataprep.split_lists import SplitLists, assign_listed, read_split_lists
from dataprep.writers import ShardWriter, ffcv_installed, import_ffcv, write_ffcv
from fasthpt.errors import FFCV_INSTALL, UserError
from fasthpt.errors import shown as quoted
from fasthpt.locks import pid_alive
from fasthpt.manifest import FORMATS, SPLITS
from fasthpt.names import name_problem

# 60/20/20: HPT's RESISC-45 splits, 18,900 / 6,300 / 6,300 images (the TensorFlow Datasets lists in
# github.com/cjrd/self-supervised-pretraining, utils/raw-tf-splits/resisc45).
DEFAULT_VAL_FRAC = DEFAULT_TEST_FRAC = 0.2
DEFAULT_SHARD_SIZE = 1000  # samples per WebDataset shard: a few shards even for small data sets
_EXAMPLES = 10  # file names shown in the summary and kept as examples of the excluded ones
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Failures of the output location, reported as one line: full disk, quota, permissions, read-only
# file system, a file where a folder should be.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                       errno.EEXIST, errno.ENOTDIR}


def prepare(dataset: str, out="data", src=None, *, num_images=None, image_size=None,
            val_frac=None, test_frac=None, splits=None, seed=0, formats=None, max_res=256,
            jpeg_quality=90, shard_size=DEFAULT_SHARD_SIZE, workers=None, force=False,
            progress=True, band_names=None, class_depth=None) -> Path:
    """Convert a dataset once into the formats the loaders read; return the dataset folder.

    dataset: output name, and the embedded generator to use when `src` is None (dataprep.synthetic.EMBEDDED).
    src: a folder with one sub-folder per class, or a .zip / .tar(.gz|.bz2|.xz) of one.
    num_images, image_size: embedded generators only (None: the generator's defaults).
    val_frac, test_frac: stratified validation and test fractions (None: 0.2 each; test_frac 0: no
    test split). splits: a folder of the user's own lists instead (dataprep.split_lists).
    seed: fixes the split, the sample order and the generated images. formats: "ffcv", "wds" or
    both (None: both, or "wds" alone where FFCV is not installed, said once on stderr).
    max_res: longer side cap (0: none).
    jpeg_quality: for images that are (re-)encoded; upright RGB JPEGs within max_res are stored
    unchanged. shard_size: samples per WebDataset shard. workers: processes (None: all cores).
    force: rebuild an existing output that `fasthpt prep` wrote (nothing else is ever deleted).
    band_names: a name per band of a raster dataset (None: the files' own, where they carry them).
    Rasters (not 8-bit RGB / gray) are stored as dataprep/rasters.py says.
    class_depth: the class is the first N folders below the shared root (None: the whole path).
    Raises UserError for bad input (one line)."""
    formats = _check_formats(formats)
    settings = _check_settings(dataset, src, num_images, image_size, seed, formats, max_res,
                               jpeg_quality, shard_size, workers)
    settings["band_names"] = _check_band_names(band_names)
    settings["class_depth"] = _check_class_depth(class_depth, src)
    lists = _split_settings(settings, val_frac, test_frac, splits)
    out = Path(out)
    _check_apart(out / dataset, src)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with output_lock(out, dataset):
            return _prepare_locked(out, dataset, settings, lists, force, progress)
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = display_name(str(exc.filename or out))
        raise UserError(f"--out {display_name(str(out))}: {exc.strerror} ({where})") from None


def _prepare_locked(out: Path, dataset: str, settings: dict, lists: SplitLists | None, force: bool,
                    progress: bool) -> Path:
    dest = out / dataset
    _remove_stale(out, dataset)
    existing = _existing_output(dest, force)
    tmp = out / f".{dataset}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        source = open_source(dataset, settings["src"], num_images=settings["num_images"],
                             image_size=settings["image_size"], seed=settings["seed"],
                             scratch=tmp / "scratch", class_depth=settings["class_depth"])
        if existing is not None and not force:
            _check_same_request(dest, existing, settings, source)
            print(f"{display_name(str(dest))}: already prepared with these settings and source; "
                  "nothing to do (--force rebuilds)")
            return dest
        manifest = _build(tmp, source, settings, lists, progress)
        shutil.rmtree(tmp / "scratch", ignore_errors=True)
        mf.write_manifest(tmp, {**manifest, "settings": settings, "fingerprint": source.fingerprint})
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _check_formats(formats) -> tuple[str, ...]:
    if formats is None:
        if ffcv_installed():
            return FORMATS
        _note_wds_only()
        return ("wds",)
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--formats {','.join(formats)}: choose one or more of {','.join(FORMATS)}")
    if "ffcv" in formats and not ffcv_installed():
        raise UserError(f"--formats {','.join(formats)}: FFCV is not installed: {FFCV_INSTALL}; "
                        "or --formats wds")
    return tuple(f for f in FORMATS if f in formats)


@functools.cache  # once per process: the demo prepares two datasets
def _note_wds_only() -> None:
    print("note: FFCV is not installed, so prep writes WebDataset shards only (the dali and torch "
          f"loaders read them); for FFCV files too: {FFCV_INSTALL}, then prep again with --force",
          file=sys.stderr)


def _check_settings(dataset, src, num_images, image_size, seed, formats, max_res, jpeg_quality,
                    shard_size, workers) -> dict:
    if not isinstance(dataset, str) or not _NAME.fullmatch(dataset) or name_problem(dataset):
        raise UserError(f"--dataset {quoted(dataset)}: use letters, digits, '.', '_' or '-' (a folder name of at "
                        "most 255 bytes)")
    checks = [
        (max_res is None or max_res >= 0, f"--max-res {max_res}: must be >= 0 (0: keep size)"),
        (1 <= jpeg_quality <= 100, f"--jpeg-quality {jpeg_quality}: must be in 1..100"),
        (shard_size >= 1, f"--shard-size {shard_size}: must be >= 1"),
        (workers is None or workers >= 1, f"--workers {workers}: must be >= 1"),
        (num_images is None or num_images >= 1, f"--num-images {num_images}: must be >= 1"),
        (src is None or (num_images is None and image_size is None),
         "--num-images/--image-size apply to embedded datasets only, not with --src"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return {"dataset": dataset, "src": None if src is None else str(src), "seed": seed,
            "formats": list(formats), "max_res": max_res or 0, "jpeg_quality": jpeg_quality,
            "shard_size": shard_size, "num_images": num_images, "image_size": image_size,
            "workers": workers or _default_workers()}


def _check_band_names(names) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise UserError(f"--band-names {','.join(map(str, names))}: give one distinct, non-empty name per band, "
                        "comma-separated (e.g. B02,B03,B04,B08)")
    return list(names)


def _check_class_depth(class_depth, src) -> int | None:
    if class_depth is None:
        return None
    if src is None:
        raise UserError("--class-depth applies to --src folders and archives, not to the embedded datasets")
    if isinstance(class_depth, bool) or not isinstance(class_depth, int) or class_depth < 1:
        raise UserError(f"--class-depth {class_depth}: must be >= 1 (folder levels below the shared root)")
    return class_depth


def _split_settings(settings: dict, val_frac, test_frac, splits) -> SplitLists | None:
    """Record how the splits are made in `settings`: fractions, or the user's lists (returned)."""
    if splits is None:
        val_frac = DEFAULT_VAL_FRAC if val_frac is None else val_frac
        test_frac = DEFAULT_TEST_FRAC if test_frac is None else test_frac
        for flag, frac in (("--val-frac", val_frac), ("--test-frac", test_frac)):
            if not 0 <= frac < 1:
                raise UserError(f"{flag} {frac}: must be in [0, 1)")
        if val_frac + test_frac >= 1:
            raise UserError(f"--val-frac {val_frac} + --test-frac {test_frac}: must be below 1 "
                            "(the rest is the train split)")
        settings.update(val_frac=val_frac, test_frac=test_frac, split_source="fractions", splits_dir=None)
        return None
    if val_frac is not None or test_frac is not None:
        raise UserError("--splits names every image's split itself: drop --val-frac/--test-frac")
    if settings["src"] is None:
        raise UserError("--splits needs --src (the embedded datasets split by --val-frac/--test-frac)")
    lists = read_split_lists(splits)
    settings.update(val_frac=None, test_frac=None, split_source=lists.source, splits_dir=str(splits))
    return lists


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_apart(dest: Path, src) -> None:
    """The output must neither be, contain nor lie inside the source (symlinks resolved): --force
    would delete the user's images, and a later listing of the source would see the output."""
    if src is None:
        return
    try:
        d, s = dest.resolve(), Path(src).expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: --src cannot be read, which open_source says
        return
    relation = "is" if d == s else "contains" if d in s.parents else "lies inside" if s in d.parents else None
    if relation:
        raise UserError(f"the output {display_name(str(d))} {relation} --src {display_name(str(s))}; "
                        "choose another --out or --dataset")


def _remove_stale(out: Path, dataset: str) -> None:
    """Temporary folders of runs that died (Ctrl-C, kill) are removed; live runs' are kept. Only
    prep's own names are touched: .DATASET.tmp-PID and .DATASET.old-PID."""
    for path in out.glob(f".{dataset}.*-*"):
        kind, _, pid = path.name.rpartition("-")
        if kind not in (f".{dataset}.tmp", f".{dataset}.old") or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _existing_output(dest: Path, force: bool) -> dict | None:
    """The manifest of the output already at `dest` (None: nothing there). A folder that prep did
    not write, or one holding files it did not write, is refused: --force must never delete them."""
    if not dest.exists() and not dest.is_symlink():
        return None
    shown = display_name(str(dest))
    raw = mf.read_raw(dest) if dest.is_dir() else None
    if not mf.is_prep_manifest(raw):
        raise UserError(f"{shown} exists and was not written by `fasthpt prep` (it has no prep "
                        "manifest.json); choose another --out or --dataset")
    if force and dest.is_symlink():
        raise UserError(f"{shown} is a symbolic link; --force rebuilds only a real folder: pass the "
                        "folder it points to as --out/--dataset")
    foreign = mf.foreign_files(dest, raw) if force else []
    if foreign:
        raise UserError(f"{shown} holds {len(foreign)} files or folders `fasthpt prep` did not write (e.g. "
                        f"{display_name(foreign[0])}); --force would delete them: move them out first")
    return raw


def _check_same_request(dest: Path, raw: dict, settings: dict, source) -> None:
    """Refuse when the existing output was prepared with other settings or from other files."""
    diffs = mf.request_differences(raw, mf.request_of(settings, source.fingerprint))
    if diffs:
        raise UserError(f"{display_name(str(dest))} was prepared differently ({'; '.join(diffs)}); "
                        "use --force to rebuild")


def _publish(tmp: Path, dest: Path) -> None:
    """Swap the finished folder into place. Between the two renames `dest` is absent: never an
    incomplete folder that looks complete."""
    old = None
    if dest.exists() or dest.is_symlink():
        _existing_output(dest, force=True)  # again: someone may have written there meanwhile
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- the conversion pass

_WORKER_SOURCE = None
_WORKER_OPTS: tuple = ()


def _init_worker(source, max_res, quality, layout, in_pool=False) -> None:
    global _WORKER_SOURCE, _WORKER_OPTS
    _WORKER_SOURCE, _WORKER_OPTS = source, (max_res, quality, layout)
    if in_pool:
        # Ctrl-C is handled once, by the parent (which terminates the pool), instead of printing
        # one KeyboardInterrupt traceback per worker.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # One process per core already: OpenCV's own threads would only oversubscribe.
        cv2.setNumThreads(1)


def _convert_one(i: int):
    """Worker: item i -> (i, label, Stored | StoredRaster) or (i, None, reason)."""
    try:
        decoded, label = _WORKER_SOURCE.load(i)
        return i, label, _store(decoded, *_WORKER_OPTS)
    except SkipImage as exc:
        return i, None, str(exc)


def _store(decoded: Decoded | Raster, max_res, quality, layout: Layout) -> Stored | StoredRaster:
    """The JPEG path for 8-bit images of an 8-bit dataset (as ever), the raster path for rasters;
    a file of another kind than the dataset's is skipped."""
    if layout.raster:
        if not isinstance(decoded, Raster):
            layout.refuse(EIGHT_BIT)
        return store_raster(decoded, layout, max_res)
    if isinstance(decoded, Raster):
        layout.refuse(decoded.header.kind)
    return store(decoded, max_res, quality)


def _header_one(i: int):
    """Worker (survey): item i -> (i, its Header or None)."""
    return i, _WORKER_SOURCE.header(i)


def _converted(source, order, settings, layout: Layout, task=_convert_one):
    """task's results in `order`, from a process pool (or in-process for one worker)."""
    opts = (source, settings["max_res"], settings["jpeg_quality"], layout)
    workers = min(settings["workers"], max(1, len(order)))
    if workers == 1:
        _init_worker(*opts)
        yield from map(task, (int(i) for i in order))
        return
    chunk = max(1, min(32, len(order) // (workers * 8)))
    # forkserver, not fork: a fork of a parent that already runs OpenCV / torch / numba threads can
    # deadlock in the child (seen: a worker stuck in cv2.setNumThreads in the full test suite).
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["dataprep.convert"])
    else:
        ctx = mp.get_context()
    with ctx.Pool(workers, initializer=_init_worker, initargs=(*opts, True)) as pool:
        yield from pool.imap(task, (int(i) for i in order), chunksize=chunk)


class _Outputs:
    """Parent side of the conversion pass: routes each converted image to its split, appends it to
    that split's shards and keeps what the manifest needs (counts, sample ids, pixel sums)."""

    def __init__(self, tmp: Path, num_classes: int, settings: dict, router, layout: Layout):
        self.writers = {s: ShardWriter(tmp / "wds", s, settings["shard_size"]) for s in SPLITS}
        self.records = {s: [] for s in SPLITS}
        self.keys = {s: [] for s in SPLITS}
        self.per_class = {s: [0] * num_classes for s in SPLITS}
        self.stats = RasterStats(layout) if layout.raster else mf.PixelStats()
        self.router = router
        self.passthrough = 0

    def add(self, source_key: str, label: int, result: Stored) -> None:
        for split, item in self.router.assign(source_key, label, (source_key, label, result)):
            self._write(split, *item)

    def _write(self, split: str, source_key: str, label: int, result: Stored | StoredRaster) -> None:
        key = f"{len(self.keys[split]):07d}"  # position in the split: the same in every format
        writer = self.writers[split]
        if isinstance(result, StoredRaster):
            self.records[split].append(writer.write(key, result.npy, label, result.height, result.width, ext="npy"))
        else:
            self.records[split].append(writer.write(key, result.jpeg, label, result.height, result.width))
        self.keys[split].append(source_key)
        self.per_class[split][label] += 1
        self.passthrough += result.passthrough
        if split == "train":
            self.stats.add(result)

    def close(self) -> dict[str, list[Path]]:
        for split, item in self.router.flush():
            self._write(split, *item)
        return {s: self.writers[s].close() for s in SPLITS}

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.records.values())

    def sizes(self) -> dict:
        hw = np.array([(r.height, r.width) for rs in self.records.values() for r in rs])
        return {"min_hw": hw.min(0).tolist(), "max_hw": hw.max(0).tolist()}


def _plan(source, settings: dict, lists: SplitLists | None):
    """(router, items to convert in the seeded order, excluded items): every item with fractions;
    with lists, the listed ones (the others are left out before any decoding)."""
    order = shuffled_order(len(source), settings["seed"])
    if lists is None:
        fracs = settings["val_frac"], settings["test_frac"]
        return StreamingSplit(*fracs, len(source.classes)), order, []
    split_of = assign_listed(lists, [source.key(i) for i in range(len(source))])
    listed = np.array([source.key(int(i)) in split_of for i in order], bool)
    return ListedSplit(split_of), order[listed], sorted(int(i) for i in order[~listed])


def _build(tmp: Path, source, settings: dict, lists: SplitLists | None, progress: bool) -> dict:
    if len(source) == 0:
        outside = [p for p, r in source.skipped if r == "not inside a class folder"]
        where = display_name(settings["src"] or source.name)
        if outside:
            raise UserError(f"{where}: no class folders ({len(outside)} files at the top level, e.g. "
                            f"{outside[0]}); put the images in one sub-folder per class")
        raise UserError(f"{where}: no image files found")
    for w in source.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if "ffcv" in settings["formats"]:
        # FFCV (and numba, ~4 s) is imported before the conversion pass: a broken install fails in
        # seconds, not after the whole data set is converted; the writer needs it anyway, and the
        # pool's forkserver workers do not inherit it. Not in a thread during the pass: that was
        # tried and starved the pool's feeder thread of the GIL (sat on 2 cores: 375 -> 132 images/s).
        import_ffcv()
    router, order, left_out = _plan(source, settings, lists)
    excluded = _excluded(source, left_out)
    start = time.perf_counter()
    layout = _layout(source, order, settings, progress)
    outputs = _Outputs(tmp, len(source.classes), settings, router, layout)
    skipped = list(source.skipped)
    bar = tqdm(_converted(source, order, settings, layout), total=len(order), disable=not progress,
               desc=f"prep {source.name}", unit="img", dynamic_ncols=True)
    for i, label, result in bar:
        if label is None:
            skipped.append((display_name(source.key(i)), display_name(result)))
        else:
            outputs.add(source.key(i), label, result)
    bar.close()
    convert_s = time.perf_counter() - start
    shards = outputs.close()
    if not outputs.records["train"]:
        _no_train(settings["src"] or source.name, outputs.per_class, skipped)
    files = _write_formats(tmp, settings, outputs.records, shards, outputs.keys, progress, layout)
    total_s = time.perf_counter() - start
    n = outputs.count
    print(_summary(source, settings, outputs.per_class, skipped, excluded, n, convert_s, total_s),
          file=sys.stderr)
    image = {**layout.manifest_fields(), **outputs.stats.fields()}
    _say_stored(layout, image)
    return mf.build_manifest(
        source=source, settings=settings, per_class=outputs.per_class, image=image,
        files=files, skipped=skipped, excluded=excluded, passthrough=outputs.passthrough,
        sizes=outputs.sizes(),
        timing={"convert_s": round(convert_s, 3), "total_s": round(total_s, 3),
                "images_per_s": round(n / max(total_s, 1e-9), 1)},
    )


# Suffixes of formats that hold 8-bit images only: a source of nothing else needs no survey, so a
# JPEG dataset is read exactly once, as before (a file among them that is a raster after all is
# skipped as one of another kind).
_EIGHT_BIT_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".webp")
# Below this many files the parent reads their headers sooner than a worker pool starts (~1 s on
# 2 cores; a header takes ~0.2 ms to read and parse).
_SURVEY_IN_PARENT = 5000


def _layout(source, order, settings: dict, progress: bool) -> Layout:
    """The dataset's one kind of image (dataprep/rasters.py): declared by an embedded generator,
    else the most common among the files' headers (read in the worker pool)."""
    gen = getattr(source, "gen", None)
    if gen is not None:  # an embedded generator says what it renders; 8-bit RGB unless it says otherwise
        declared = [Header(Kind(gen.bands, gen.dtype), gen.band_names, gen.dtype)] if hasattr(gen, "bands") else []
        return choose_layout(declared, settings["band_names"])
    if all(source.key(int(i)).lower().endswith(_EIGHT_BIT_SUFFIXES) for i in order):
        return choose_layout([], settings["band_names"])
    workers = settings["workers"] if len(order) > _SURVEY_IN_PARENT else 1
    bar = tqdm(_converted(source, order, {**settings, "workers": workers}, Layout(), task=_header_one),
               total=len(order), disable=not progress, desc=f"survey {source.name}", unit="file", dynamic_ncols=True)
    headers = [header for _, header in bar]
    bar.close()
    return choose_layout(headers, settings["band_names"])


def _say_stored(layout: Layout, image: dict) -> None:
    if not layout.raster:
        return
    names = f" ({', '.join(layout.band_names)})" if layout.band_names else ""
    print(f"stored as {layout.kind.many()}{names}, values as in the files; per-band statistics in "
          "manifest.json", file=sys.stderr)
    for c, (low, high) in enumerate(image["value_range"]):
        if low == high:
            name = layout.band_names[c] if layout.band_names else f"band {c}"
            print(f"warning: {name} holds one value ({low}) over the whole train split: its std is 0, so "
                  "it cannot be standardised; drop the band or check the files", file=sys.stderr)


def _excluded(source, items: list[int]) -> dict | None:
    """What the manifest says of the images no list names: how many, per class, a few of them."""
    if not items:
        return None
    per_class = [0] * len(source.classes)
    for i in items:
        per_class[source.items[i][1]] += 1
    return {"count": len(items), "per_class": per_class,
            "examples": [display_name(source.key(i)) for i in items[:_EXAMPLES]]}


def _write_formats(tmp: Path, settings: dict, records, shards, keys, progress: bool, layout: Layout) -> dict:
    splits = [s for s in SPLITS if records[s]]
    files: dict = {}
    if "ffcv" in settings["formats"]:
        (tmp / "ffcv").mkdir()
        for s in splits:
            write_ffcv(tmp / "ffcv" / f"{s}.beton", records[s], settings["max_res"],
                       settings["jpeg_quality"], progress=progress, raster=layout.raster)
        files["ffcv"] = {s: f"ffcv/{s}.beton" for s in splits}
    if "wds" in settings["formats"]:
        files["wds"] = {s: [p.relative_to(tmp).as_posix() for p in shards[s]] for s in splits}
    else:
        shutil.rmtree(tmp / "wds", ignore_errors=True)
    (tmp / "samples").mkdir()
    for s in splits:
        write_samples(tmp / "samples" / f"{s}.jsonl", keys[s], [r.label for r in records[s]])
    files["samples"] = {s: f"samples/{s}.jsonl" for s in splits}
    return files


def _no_train(where: str, per_class: dict, skipped: list) -> None:
    held = {s: sum(per_class[s]) for s in SPLITS if s != "train"}
    if not any(held.values()):
        raise UserError(f"{display_name(where)}: no usable images ({len(skipped)} files skipped, "
                        f"e.g. {_first_skip(skipped)})")
    raise UserError(f"{display_name(where)}: no usable train images ("
                    f"{' / '.join(f'{n} {s}' for s, n in held.items())}, {len(skipped)} files "
                    "skipped); lower --val-frac/--test-frac, or list more images in train.txt")


def _first_skip(skipped) -> str:
    return f"{skipped[0][0]}: {skipped[0][1]}" if skipped else "none"


def _summary(source, settings, per_class, skipped, excluded, n, convert_s, total_s) -> str:
    counts = " / ".join(f"{sum(per_class[s])} {s}" for s in SPLITS)
    lines = [
        f"prepared {source.name}: {counts} images, "
        f"{len(source.classes)} classes, formats {'+'.join(settings['formats'])}, "
        f"{n / max(total_s, 1e-9):.0f} images/s ({n / max(convert_s, 1e-9):.0f}/s decode+encode, "
        f"{settings['workers']} workers, {total_s:.1f} s)"
    ]
    if excluded:
        lines.append(f"excluded {excluded['count']} images that no --splits list names (e.g. "
                     f"{', '.join(excluded['examples'][:3])}; counted in manifest.json)")
    if skipped:
        lines.append(f"skipped {len(skipped)} files:")
        lines += [f"  {p}: {r}" for p, r in skipped[:_EXAMPLES]]
        if len(skipped) > _EXAMPLES:
            lines.append(f"  ... and {len(skipped) - _EXAMPLES} more (all listed in manifest.json)")
    return "\n".join(lines + _class_warnings(source.classes, per_class))


def _class_warnings(classes: list[str], per_class: dict) -> list[str]:
    """What the evaluations will make of the classes: one class is no classification task, and a
    class too small for the split fractions is missing from a held-out split (said per class)."""
    lines = []
    if len(classes) == 1:
        lines.append(f"warning: one class ({classes[0]!r}): fine for self-supervised pretraining, but no "
                     "classification task: `fasthpt eval` refuses it (any accuracy would be 1.0)")
    present = [s for s in SPLITS if sum(per_class[s])]
    for c, name in enumerate(classes):
        total = sum(per_class[s][c] for s in SPLITS)
        missing = [s for s in present if not per_class[s][c]]
        if not total:
            lines.append(f"warning: class {name!r} has no images in any split")
        elif missing:
            lines.append(f"warning: class {name!r} has {total} image{'s' * (total > 1)}, none in "
                         f"{' or '.join(missing)}: evaluations leave it out there")
    return lines
