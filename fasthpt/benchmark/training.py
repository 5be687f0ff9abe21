"""`fasthpt bench train`: steady-state MoCo-v2 training throughput and data stall, per loader
backend and per set of Composer algorithms.

Method (warm up first, synchronise before reading the clock, median of repeats): each row is a
real short run through the same Trainer as `fasthpt pretrain`; the first ``--warmup`` batches
(model build, loader start, first-step allocation) stay out of the figure, the clock is read at
BATCH_END (after synchronising CUDA) over the next ``--batches`` batches, repeated ``--repeats``
times, median reported. ``--data synthetic`` feeds fixed random tensors already in memory: the
model's own ceiling, with no loader at all.
``--knn`` adds the end-of-run kNN accuracy, to see that a speed-up does not cost accuracy.
``--reference`` adds, first, what the device attains on the same backbone: a plain supervised
training step (the backbone + a 1000-class linear head, cross-entropy, SGD with momentum, fixed
random tensors) in the same process and settings (batch, resolution, precision, channels_last),
timed the same way; every MoCo row then carries its ratio to it (a MoCo-v2 step does about 1.33x
the work of a supervised one: query forward and backward, key forward). One JSON line per row
(``--json FILE``, appended) with fasthpt.fileio.run_metadata's commit, host and time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

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
    parser.add_argument("--reference", action="store_true",
                        help="also time a plain supervised training step of the same backbone (same batch, "
                        "resolution, precision and layout): the reference row, and each row's ratio to it")
    parser.add_argument("--knn", action="store_true",
                        help="also report the kNN accuracy (val split) of the backbone at the end of each run")
    parser.add_argument("--json", default=None, help="append one JSON line per row to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="further config overrides")


def step_clock():
    """A Composer callback recording the wall time of each batch end and the time spent waiting for
    each batch (Composer imported here: parsing a command line, as bench/parse_only.py does, needs
    none of it)."""
    from composer.core import Callback

    class StepClock(Callback):
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

    return StepClock()


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

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        pass


def measure(cfg, warmup: int, batches: int, synthetic: bool) -> dict:
    from fasthpt.train import run_stage

    clock = step_clock()
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


def measure_reference(cfg, warmup: int, batches: int) -> dict:
    """Seconds per step of a plain supervised step of ``cfg``'s backbone at its batch, resolution,
    precision and layout, on fixed random tensors: what the device attains without MoCo."""
    from fasthpt.device import resolve_precision, trainer_device
    from fasthpt.models.backbones import build_backbone

    device = resolve_device()
    precision = resolve_precision(cfg.train.precision, trainer_device())
    layout = torch.channels_last if cfg.data.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model.arch)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 1000)).to(device)
    model = model.to(memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    b, r = cfg.data.batch_size, cfg.data.res
    x = torch.randn(b, 3, r, r, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 1000, (b,), device=device)
    autocast = torch.autocast(device.type, dtype={"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(
        precision, torch.float32), enabled=precision in ("amp_bf16", "amp_fp16"))

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    sync()
    return {"step_s": (time.perf_counter() - start) / batches, "data_stall_frac": 0.0, "backend": "reference",
            "knn_acc": None, "precision": precision}


def planned_rows(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(backend, algorithm set) per row, in order: the reference first when asked (in the first
    set's layout: channels_last when it lists it), then every backend with every set."""
    sets = [[] if s.strip() in ("", "none") else [a.strip() for a in s.split(",")] for s in args.algorithms.split(";")]
    backends = ["synthetic"] if args.data == "synthetic" else [b.strip() for b in args.backends.split(",")]
    rows = [(backend, algorithms) for backend in backends for algorithms in sets]
    return ([("reference", sets[0])] if args.reference else []) + rows


def row_config(args, backend: str, algorithms: list[str], run_dir: str):
    """The run config of one planned row (the reference row: the synthetic row's)."""
    return _row_config(args, "torch" if backend == "reference" else backend, algorithms, run_dir)


def run(args: argparse.Namespace) -> int:
    if args.warmup < 1 or args.batches < 2:
        raise UserError("need --warmup >= 1 and --batches >= 2")
    rows = planned_rows(args)
    figures: dict[int, list[dict]] = {i: [] for i in range(len(rows))}
    # Repeats are the outer loop: on a shared machine, load drifts; interleaving spreads it over rows.
    for _ in range(args.repeats):
        for i, (backend, algorithms) in enumerate(rows):
            with tempfile.TemporaryDirectory(prefix="fasthpt-bench-") as tmp:
                cfg = row_config(args, backend, algorithms, tmp)
                if backend == "reference":
                    got = measure_reference(cfg, args.warmup, args.batches)
                else:
                    got = measure(cfg, args.warmup, args.batches, args.data == "synthetic")
                figures[i].append({**got, "load": os.getloadavg()[0]})
    reference = None
    for i, (backend, algorithms) in enumerate(rows):
        row = _emit(args, algorithms, figures[i], reference)
        if backend == "reference":
            reference = row
    return 0


def _emit(args, algorithms: list[str], figures: list[dict], reference: dict | None) -> dict:
    def median(key):
        return statistics.median(f[key] for f in figures)

    step = median("step_s")  # the median step; samples/s derived from it so the two agree
    runs = [round(args.batch / f["step_s"], 2) for f in figures]
    row = {
        "bench": "train", "data": "synthetic" if figures[0]["backend"] == "reference" else args.data,
        "backend": figures[0]["backend"], "arch": args.arch,
        "res": args.res, "batch": args.batch, "workers": args.workers, "queue": args.queue,
        "algorithms": algorithms or ["none"], "samples_per_s": round(args.batch / step, 2),
        "step_s": round(step, 4), "data_stall_frac": round(median("data_stall_frac"), 3),
        "samples_per_s_runs": runs,
        "warmup": args.warmup, "batches": args.batches, "repeats": args.repeats,
        "load_avg_1min": round(median("load"), 2),  # the machine's other load while measuring
        "knn_acc": figures[-1]["knn_acc"],
        "device": accelerator_name() or f"cpu x{os.cpu_count()}", **run_metadata(),
    }
    if figures[0]["backend"] == "reference":
        row["what"] = f"supervised {args.arch} step (reference), {figures[0]['precision']}"
    elif reference is not None:
        row["vs_reference"] = round(row["samples_per_s"] / reference["samples_per_s"], 3)
        # the spread of the ratio over the repeats (each run against the reference's median)
        row["vs_reference_runs"] = [round(r / reference["samples_per_s"], 3) for r in runs]
    print(json.dumps(row))
    if args.json:
        append_jsonl(args.json, row)
    return row
