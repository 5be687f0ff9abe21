"""`fasthpt bench train`: steady-state MoCo-v2 training throughput and data stall, per loader
backend and per set of Composer algorithms.

Method (warm up first, synchronise before reading the clock, median of repeats): each row is a
real short run through the same Trainer as `fasthpt pretrain`; the first ``--warmup`` batches
(model build, loader start, first-step allocation) stay out of the figure, the clock is read at
BATCH_END (after synchronising CUDA) over the next ``--batches`` batches, repeated ``--repeats``
times, median reported. ``--data synthetic`` feeds fixed random tensors already in memory: the
model's own ceiling, with no loader at all.
``--knn`` adds the end-of-run kNN accuracy, to see that a speed-up does not cost accuracy. One JSON
line per row (``--json FILE``, appended) with fasthpt.fileio.run_metadata's commit, host and time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from composer.core import Callback

from fasthpt.device import accelerator_name, resolve_device
from fasthpt.errors import UserError
from fasthpt.fileio import append_jsonl, run_metadata


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a `fasthpt prep` folder, or `synthetic` (no loader)")
    parser.add_argument("--config", default=None, help="YAML run config to start from (default: built-in defaults)")
    parser.add_argument("--backends", default="auto", help="comma-separated loader backends (default auto)")
    parser.add_argument("--algorithms", default="none",
                        help="';'-separated algorithm sets, each ','-separated, "
                        "e.g. 'none;channels_last;progressive_resizing'")
    parser.add_argument("--arch", default="resnet_tiny")
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--queue", type=int, default=4096, help="MoCo queue size (default 4096)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    parser.add_argument("--batches", type=int, default=10, help="timed batches per run (default 10)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; median reported (default 1)")
    parser.add_argument("--knn", action="store_true",
                        help="also report the kNN accuracy (val split) of the backbone at the end of each run")
    parser.add_argument("--json", default=None, help="append one JSON line per row to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="further config overrides")


class StepClock(Callback):
    """Wall time of each batch end, and the time spent waiting for each batch."""

    def __init__(self):
        self.ends: list[float] = []
        self.waits: list[float] = []
        self._t = 0.0

    def before_dataloader(self, state, logger):
        self._t = time.perf_counter()

    def after_dataloader(self, state, logger):
        self.waits.append(time.perf_counter() - self._t)

    def batch_end(self, state, logger):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


class SyntheticLoader:
    """``n`` fixed random batches of two views, cycled: the training step without any loading."""

    backend = "synthetic"

    def __init__(self, batch: int, res: int, device: torch.device, n: int = 4, channels_last: bool = False):
        g = torch.Generator().manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.batches = [tuple(torch.randn(batch, 3, res, res, generator=g).to(device).contiguous(memory_format=fmt)
                              for _ in range(2)) for _ in range(n)]
        self.num_samples = batch * n

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass


def measure(cfg, warmup: int, batches: int, synthetic: bool) -> dict:
    from fasthpt.train import run_stage

    clock = StepClock()
    loader = None
    if synthetic:
        loader = SyntheticLoader(cfg.data.batch_size, cfg.data.res, resolve_device(),
                                 channels_last=cfg.data.channels_last)
    result = run_stage(cfg, callbacks=(clock,), loader=loader)
    ends, waits = clock.ends[warmup - 1 :], clock.waits[warmup:]
    span = ends[-1] - ends[0]
    timed = len(ends) - 1
    knn = [json.loads(line).get("knn/acc") for line in (cfg.run_path / "metrics.jsonl").read_text().splitlines()]
    knn = [a for a in knn if a is not None]
    return {"step_s": span / timed, "data_stall_frac": sum(waits[:timed]) / span, "backend": result["backend"],
            "knn_acc": knn[-1] if knn else None}


def _row_config(args, backend: str, algorithms: list[str], run_dir: str):
    from fasthpt.config import load_config

    synthetic = args.data == "synthetic"
    overrides = [
        f"run_dir={run_dir}", "name=bench", f"model.arch={args.arch}", f"data.res={args.res}",
        f"data.batch_size={args.batch}", f"data.workers={args.workers}", f"model.queue_size={args.queue}",
        f"train.max_duration={args.warmup + args.batches}ba", "train.progress_bar=false", "train.autoresume=false",
        f"train.save_interval={10 ** 9}ba", f"train.log_interval={10 ** 9}ba",
        f"train.knn_interval={args.warmup + args.batches if args.knn and not synthetic else 0}ba",
        f"train.algorithms=[{','.join(algorithms)}]",
    ]
    if not synthetic:
        overrides += [f"data.path={args.data}", f"data.backend={backend}"]
    if "channels_last" in algorithms:
        overrides.append("data.channels_last=true")
    return load_config(args.config, overrides + list(args.overrides))


def run(args: argparse.Namespace) -> int:
    if args.warmup < 1 or args.batches < 2:
        raise UserError("need --warmup >= 1 and --batches >= 2")
    sets = [[] if s.strip() in ("", "none") else [a.strip() for a in s.split(",")] for s in args.algorithms.split(";")]
    backends = ["synthetic"] if args.data == "synthetic" else [b.strip() for b in args.backends.split(",")]
    rows = [(backend, algorithms) for backend in backends for algorithms in sets]
    figures: dict[int, list[dict]] = {i: [] for i in range(len(rows))}
    # Repeats are the outer loop: on a shared machine, load drifts; interleaving spreads it over rows.
    for _ in range(args.repeats):
        for i, (backend, algorithms) in enumerate(rows):
            with tempfile.TemporaryDirectory(prefix="fasthpt-bench-") as tmp:
                cfg = _row_config(args, backend, algorithms, tmp)
                figures[i].append({**measure(cfg, args.warmup, args.batches, args.data == "synthetic"),
                                   "load": os.getloadavg()[0]})
    for i, (_, algorithms) in enumerate(rows):
        _emit(args, algorithms, figures[i])
    return 0


def _emit(args, algorithms: list[str], figures: list[dict]) -> None:
    def median(key):
        return statistics.median(f[key] for f in figures)

    step = median("step_s")  # the median step; samples/s derived from it so the two agree
    row = {
        "bench": "train", "data": args.data, "backend": figures[0]["backend"], "arch": args.arch,
        "res": args.res, "batch": args.batch, "workers": args.workers, "queue": args.queue,
        "algorithms": algorithms or ["none"], "samples_per_s": round(args.batch / step, 2),
        "step_s": round(step, 4), "data_stall_frac": round(median("data_stall_frac"), 3),
        "samples_per_s_runs": [round(args.batch / f["step_s"], 2) for f in figures],
        "warmup": args.warmup, "batches": args.batches, "repeats": args.repeats,
        "load_avg_1min": round(median("load"), 2),  # the machine's other load while measuring
        "knn_acc": figures[-1]["knn_acc"],
        "device": accelerator_name() or f"cpu x{os.cpu_count()}", **run_metadata(),
    }
    print(json.dumps(row))
    if args.json:
        append_jsonl(args.json, row)
