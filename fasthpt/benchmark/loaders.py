"""`fasthpt bench loaders`: two-view samples/s per loader backend as training sees it, the cost of an
epoch start, and the JPEG decode ceiling of the same files.

Method: build each loader and iterate it exactly as the trainer does (Composer: ``set_epoch`` then
``islice(loader, len(loader))``, epoch after epoch, so the generator is never run past an epoch's
last batch), at the training run's layout (channels_last by default) and batch. ``--warmup`` batches
first (pipeline build, JIT compilation, worker start-up stay out of the figure), then ``--batches``
batches ``--repeats`` times, synchronising CUDA before each clock reading; report the median
samples/s over whole timed spans, epoch starts included. The epoch start is reported on its own: the
median wait for an epoch's first batch and the median wait for the other batches (the table shows
both; ``epoch_start_s`` is their difference, negative where a loader has the next epoch's first
batch ready early; null when no epoch starts inside the timed batches: use a split of a few batches
per epoch, or more --batches). One sample = two views of one image. The ``decode`` row decodes the
same JPEG bytes (read from the WebDataset shards) with the fastest decoder at hand (OpenCV's
libjpeg-turbo, else PIL) in ``--workers`` processes and no augmentation: no CPU loader can beat it,
so each backend's fraction of it says how much augmentation costs. Every row is one JSON line
(``--json FILE``, appended) with fasthpt.fileio.run_metadata's commit, host and time; a backend that
cannot run is a row with ``skipped`` and the reason.
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import statistics
import time
from multiprocessing import get_context

from fasthpt.data import BACKENDS
from fasthpt.errors import UserError
from fasthpt.fileio import append_jsonl, run_metadata
from fasthpt.manifest import load_manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a `fasthpt prep` output folder")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, from: {', '.join(BACKENDS)}")
    parser.add_argument("--res", type=int, default=224, help="side of each view (default 224)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader workers (default: all cores)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (default 5)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--policy", default="mocov2", help="augmentation preset (default mocov2)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--layout", choices=("channels_last", "contiguous"), default="channels_last",
                        help="memory layout of the batches (default channels_last, as training with that algorithm)")
    parser.add_argument("--decode-images", type=int, default=2000, help="JPEGs for the decode row (default 2000)")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode-ceiling row")
    parser.add_argument("--json", default=None, help="append one JSON line per row to this file")


def _composer_batches(loader):
    """(is_first_of_epoch, batch) across epoch boundaries, iterated as Composer's trainer does."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        for i, batch in enumerate(itertools.islice(loader, len(loader))):
            yield i == 0, batch


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_start_waits(waits: list[float], firsts: list[bool]) -> dict:
    """Median wait (seconds) for an epoch's first batch and for the other batches, and their
    difference (``epoch_start_s``); None where no epoch starts (or nothing else) was timed."""
    first = [w for w, f in zip(waits, firsts) if f]
    rest = [w for w, f in zip(waits, firsts) if not f]
    if not first or not rest:
        return {"epoch_start_s": None, "first_wait_s": None, "wait_s": None}
    a, b = statistics.median(first), statistics.median(rest)
    return {"epoch_start_s": round(a - b, 5), "first_wait_s": round(a, 5), "wait_s": round(b, 5)}


def measure_backend(args, backend: str, progress) -> dict:
    """Median two-view samples/s of one backend and its epoch-start cost, or {'skipped': reason}."""
    import fasthpt.data as data_api
    from fasthpt.device import resolve_device

    device = resolve_device(args.device)
    try:
        loader = data_api.build_ssl_loader(args.data, split=args.split, backend=backend, res=args.res,
                                           batch_size=args.batch, policy=args.policy, workers=args.workers,
                                           device=device, drop_last=True,
                                           channels_last=args.layout == "channels_last")
    except UserError as exc:
        return {"skipped": str(exc)}
    batches = _composer_batches(loader)
    for _ in range(args.warmup):
        next(batches)
        progress.update(1)
    runs, waits, firsts = [], [], []
    for _ in range(args.repeats):
        _sync(device)
        start = last = time.perf_counter()
        for _ in range(args.batches):
            first, _batch = next(batches)
            _sync(device)
            now = time.perf_counter()
            waits.append(now - last)
            firsts.append(first)
            last = now
            progress.update(1)
        runs.append(args.batches * args.batch / (last - start))
    batches.close()
    return {"samples_per_s": statistics.median(runs), "runs": runs, "device": str(device),
            "batches_per_epoch": len(loader), **epoch_start_waits(waits, firsts), "epoch_starts_timed": sum(firsts)}


_BLOBS: list[bytes] = []  # set before the decode pool forks: workers inherit it instead of unpickling it


def _decoder():
    """The fastest JPEG decoder at hand: OpenCV (libjpeg-turbo; prep's own codec), else PIL."""
    try:
        import cv2
        import numpy as np

        cv2.setNumThreads(1)
        return "cv2", lambda blob: cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    except ImportError:
        from PIL import Image

        return "pil", lambda blob: Image.open(io.BytesIO(blob)).convert("RGB")


def _decode_share(task: tuple[int, int, int]) -> int:
    worker, workers, passes = task
    decode = _decoder()[1]
    mine = _BLOBS[worker::workers]
    for _ in range(passes):
        for blob in mine:
            decode(blob)
    return len(mine) * passes


def measure_decode(args, progress) -> dict:
    """JPEG decode rate (images/s, no augmentation) of the split's files over ``--workers`` processes."""
    from fasthpt.data import common

    try:
        manifest = load_manifest(args.data)
        shards = manifest.wds_shards(args.split)
    except UserError as exc:
        return {"skipped": str(exc)}
    if manifest.is_raster:
        return {"skipped": "rasters are stored as raw arrays: nothing to decode"}
    samples = common.index_wds(shards)[: args.decode_images]
    _BLOBS.clear()
    for shard_id, path in enumerate(shards):
        with open(path, "rb") as handle:
            _BLOBS.extend(common.read_bytes(handle, s) for s in samples if s.shard == shard_id)
    workers = max(1, args.workers)
    passes = max(1, math.ceil(4000 / max(1, len(_BLOBS))))  # each timed run decodes >= 4000 images
    runs = []
    with get_context("fork").Pool(workers) as pool:
        pool.map(_decode_share, [(w, workers, 1) for w in range(workers)])  # warm-up: imports, caches
        for _ in range(args.repeats):
            start = time.perf_counter()
            count = sum(pool.map(_decode_share, [(w, workers, passes) for w in range(workers)]))
            runs.append(count / (time.perf_counter() - start))
            progress.update(1)
    return {"samples_per_s": statistics.median(runs), "runs": runs, "device": "cpu", "decoder": _decoder()[0],
            "images": len(_BLOBS)}


def bytes_per_sample(data, split: str, backend: str) -> float | None:
    """On-disk bytes per sample of the files ``backend`` reads (the .beton for ffcv, the shards
    otherwise), or None where they are absent."""
    manifest = load_manifest(data)
    fmt = "ffcv" if backend == "ffcv" else "wds"
    if fmt not in manifest.formats:
        return None
    files = [manifest.ffcv_path(split)] if fmt == "ffcv" else manifest.wds_shards(split)
    return round(sum(os.path.getsize(f) for f in files) / manifest.count(split), 1)


def _row(args, backend: str, result: dict) -> dict:
    return {
        "backend": backend, "res": args.res, "batch": args.batch, "workers": args.workers, "layout": args.layout,
        "device": result.get("device"), "samples_per_s": result.get("samples_per_s"), "runs": result.get("runs"),
        "batches_per_epoch": result.get("batches_per_epoch"), "epoch_start_s": result.get("epoch_start_s"),
        "first_wait_s": result.get("first_wait_s"), "wait_s": result.get("wait_s"),
        "epoch_starts_timed": result.get("epoch_starts_timed"),
        "bytes_per_sample": None if result.get("skipped") or backend == "decode" else
        bytes_per_sample(args.data, args.split, backend),
        "skipped": result.get("skipped"), "decoder": result.get("decoder"), "data": str(args.data),
        "split": args.split, "policy": args.policy, **run_metadata(),
    }


def format_table(rows: list[dict]) -> str:
    ceiling = next((r["samples_per_s"] for r in rows if r["backend"] == "decode" and r["samples_per_s"]), None)
    baseline = next((r["samples_per_s"] for r in rows if r["backend"] == "torch" and r["samples_per_s"]), None)
    lines = [f"{'backend':8} {'res':>4} {'batch':>5} {'workers':>7} {'device':>6} {'samples/s':>10} "
             f"{'x torch':>8} {'of decode':>9} {'batches/epoch':>13} {'wait 1st/other':>14} {'bytes/sample':>12}"]
    for r in rows:
        if r["skipped"]:
            lines.append(f"{r['backend']:8} skipped: {r['skipped']}")
            continue
        rate = r["samples_per_s"]
        speedup = f"{rate / baseline:.1f}x" if baseline and r["backend"] != "decode" else "-"
        frac = f"{rate / ceiling:.0%}" if ceiling and r["backend"] != "decode" else "-"
        first, other = r.get("first_wait_s"), r.get("wait_s")
        start = "-" if first is None else f"{1000 * first:.0f}/{1000 * other:.0f} ms"
        lines.append(f"{r['backend']:8} {r['res']:>4} {r['batch']:>5} {r['workers']:>7} {r['device']:>6} "
                     f"{rate:>10.1f} {speedup:>8} {frac:>9} {r.get('batches_per_epoch') or '-':>13} {start:>14} "
                     f"{r.get('bytes_per_sample') or '-':>12}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend(s) {', '.join(unknown)}; valid: {', '.join(BACKENDS)}")
    for key in ("res", "batch", "batches", "repeats"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key} must be >= 1")
    if args.warmup < 0 or args.workers < 0:
        raise UserError("--warmup and --workers must be >= 0")
    load_manifest(args.data)  # a missing or incomplete data folder is the user's error, not a skipped row
    rows = []
    per_backend = args.warmup + args.repeats * args.batches
    total = per_backend * len(backends) + (0 if args.no_decode else args.repeats)
    with tqdm(total=total, desc="bench loaders", unit="batch") as progress:
        if not args.no_decode:
            rows.append(_row(args, "decode", measure_decode(args, progress)))
        for backend in backends:
            progress.set_postfix_str(backend)
            result = measure_backend(args, backend, progress)
            if "skipped" in result:
                progress.update(per_backend)
            rows.append(_row(args, backend, result))
    print(format_table(rows))
    if args.json:
        append_jsonl(args.json, *rows)
    return 0
