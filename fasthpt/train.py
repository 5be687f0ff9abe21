"""HPT pretraining on Composer: one config -> one run (or its chain of stages).

    composer -n N fasthpt/train.py CONFIG [key=value ...]   # N processes (multi-node: launcher flags)
    composer -n N -m fasthpt.train CONFIG [key=value ...]   # the same, as a module
    fasthpt pretrain CONFIG [key=value ...]                 # one process
    from fasthpt.train import pretrain; pretrain(cfg)       # library

A run writes runs/<name>/{config.yaml, base.json, data.json, checkpoints/, backbone.pt, metrics.jsonl};
with
``stages`` each stage writes those into runs/<name>/<stage>/ and its backbone.pt is the next
stage's base. The run is the top of the training assembly: it calls fasthpt.trainer_setup, which
never calls back.

Run as a file, this module's folder (fasthpt/) comes first on sys.path. That is safe without
editing sys.path: fasthpt imports its own modules by absolute ``fasthpt.*`` names only, and no
module or package in fasthpt/ has the name of a standard-library or installed top-level module, so
an import by name from Python or a library cannot land on a file of ours (tests/test_imports.py
checks the names; tests/train/test_entry.py runs this file and checks what it imported).
"""

import dataclasses
import logging
import math
import shutil
import sys
import time

from composer.utils import dist

from fasthpt.config import RunConfig, batch_summary, check_queue, load_config, per_process, save_config, validate
from fasthpt.device import resolve_precision, trainer_device
from fasthpt.errors import UserError, interrupted_code
from fasthpt.fileio import atomic_path, atomic_write_json, printable_json
from fasthpt.hpt import check_stage_data, stage_configs
from fasthpt.models.backbones import BASE_REPORT, save_backbone
from fasthpt.models.moco import replicas_in_sync
from fasthpt.provenance import record_data
from fasthpt.run_folder import Interrupted, claim, resume_hint, write_failure
from fasthpt.trainer_setup import Loader, Parts, build_trainer

log = logging.getLogger("fasthpt.train")


def pretrain(cfg: RunConfig) -> dict:
    """Run ``cfg`` (every stage in order when ``cfg.stages``). Returns run_dir, backbone (path of
    the final backbone.pt), iterations (total batches trained, resumed ones included),
    iterations_this_launch, wall_clock_s / samples_per_s / data_stall_frac (this launch),
    backend, world_size, ranks_in_sync, and with stages a list of the same per stage."""
    validate(cfg)  # a RunConfig built in code gets the checks a loaded one had
    if not cfg.stages:
        return run_stage(cfg)
    _init_dist()
    stages = stage_configs(cfg)
    check_stage_data(stages, dist.get_world_size())  # all of them, before stage 1 trains
    lock = claim(cfg)
    try:
        if dist.get_global_rank() == 0:
            save_config(cfg, cfg.run_path / "config.yaml")
        results = [run_stage(stage) for stage in stages]
        final = cfg.run_path / "backbone.pt"
        if dist.get_global_rank() == 0:
            with atomic_path(final) as tmp:
                shutil.copyfile(results[-1]["backbone"], tmp)
        dist.barrier()
    finally:
        if lock is not None:
            lock.release()
    return {"run_dir": str(cfg.run_path), "backbone": str(final), **_combine(results), "stages": results}


def _combine(results: list[dict]) -> dict:
    """Totals over stages; rates weighted by each stage's wall time (this launch's)."""
    wall = sum(r["wall_clock_s"] for r in results)

    def weighted(key):
        pairs = [(r[key], r["wall_clock_s"]) for r in results if math.isfinite(r[key])]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else float("nan")

    return {
        "iterations": sum(r["iterations"] for r in results),
        "iterations_this_launch": sum(r["iterations_this_launch"] for r in results), "wall_clock_s": wall,
        "samples_per_s": weighted("samples_per_s"), "data_stall_frac": weighted("data_stall_frac"),
        "backend": results[-1]["backend"], "world_size": results[-1]["world_size"],
        "ranks_in_sync": all(r["ranks_in_sync"] for r in results),
    }


def _init_dist() -> None:
    dist.initialize_dist(trainer_device())


def run_stage(cfg: RunConfig, *, callbacks: tuple = (), loader: Loader | None = None) -> dict:
    """One MoCo-v2 / HPT run (no stages) on this process' share of the job. ``callbacks`` are
    added to the Trainer's; ``loader`` replaces the one built from ``cfg.data`` (benchmarks).
    Before any heavy work: the config's ranges, the per-process batch of a data.global_batch
    (fasthpt.config.per_process, logged), the queue's against the world size, then the run folder
    (writable, not another run's, not in use: fasthpt.run_folder.claim)."""
    validate(cfg)
    _init_dist()
    world = dist.get_world_size()
    cfg = per_process(cfg, world)  # a global batch (data.global_batch) shared out over the processes
    if cfg.data.global_batch:
        validate(cfg)  # model.bn_groups against the derived per-process batch
        log.info("%s", batch_summary(cfg, world))
    check_queue(cfg, world)
    lock = claim(cfg)
    try:
        return _train(cfg, callbacks, loader)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RunConfig, callbacks: tuple, loader: Loader | None) -> dict:
    rank = dist.get_global_rank()
    run = cfg.run_path
    device = trainer_device()
    parts = None
    try:
        parts = build_trainer(cfg, device, resolve_precision(cfg.train.precision, device), callbacks=callbacks,
                              loader=loader)
        if rank == 0:  # only once the base, the data and the config have all been accepted
            save_config(cfg, run / "config.yaml")
            # how the base was read, conv1's strategy for N-band data included (export reads it)
            atomic_write_json(run / BASE_REPORT, dataclasses.asdict(parts.report))
            if loader is None:  # where the data was and what it looked like, for exports (a benchmark's own
                record_data(run, cfg.data.path)  # loader reads no data folder)
        start_batch, start_sample = int(parts.trainer.state.timestamp.batch), int(parts.trainer.state.timestamp.sample)
        t0 = time.perf_counter()
        # a run resumed from its final checkpoint, or from where its plateau stopped it, is already
        # done: Composer would refuse to fit, or would train on past the plateau
        stopped = parts.monitor is not None and parts.monitor.stopped_at is not None
        if start_batch < cfg.durations.max_duration and not stopped:
            parts.trainer.fit()
    except (KeyboardInterrupt, SystemExit) as exc:
        code = interrupted_code(exc)
        if code is None:
            raise
        where = f"at batch {int(parts.trainer.state.timestamp.batch)}" if parts else "before training started"
        raise Interrupted(f"interrupted {where}; {resume_hint(cfg)}", code) from None
    except (OSError, RuntimeError) as exc:
        failure = write_failure(exc, run)
        if failure is None:
            raise
        raise UserError(f"{failure}; free some space, then {resume_hint(cfg)}") from None
    wall = time.perf_counter() - t0
    return _finish(cfg, parts, start_batch, start_sample, wall)


def _finish(cfg: RunConfig, parts: Parts, start_batch: int, start_sample: int, wall: float) -> dict:
    """backbone.pt (rank 0), the replicas' agreement, and the run's summary."""
    trainer, moco, loader, stall = parts.trainer, parts.moco, parts.loader, parts.stall
    rank, run = dist.get_global_rank(), cfg.run_path
    done_batch, done_sample = int(trainer.state.timestamp.batch), int(trainer.state.timestamp.sample)
    # BN running statistics are per process by design (shuffle-BN); weights and queue must agree.
    in_sync = replicas_in_sync(list(moco.encoder_k.parameters()) + [moco.queue])
    backbone = run / "backbone.pt"
    if rank == 0:
        save_backbone(moco.backbone, backbone)
    trainer.close()
    dist.barrier()
    result = {
        "run_dir": str(run), "backbone": str(backbone), "iterations": done_batch,
        "iterations_this_launch": done_batch - start_batch, "wall_clock_s": wall,
        "samples_per_s": (done_sample - start_sample) / wall if wall > 0 else 0.0,
        "data_stall_frac": stall.stall_frac, "backend": getattr(loader, "backend", "?"),
        "base": parts.report.summary(), "world_size": dist.get_world_size(), "ranks_in_sync": in_sync,
        "batch_per_process": cfg.data.batch_size, "global_batch": cfg.data.batch_size * dist.get_world_size(),
        "plateau": parts.monitor.plateau_result() if parts.monitor is not None else None,
    }
    if rank == 0:
        if result["plateau"] is not None:
            atomic_write_json(run / "plateau.json", result["plateau"])
        log.info("run %s: %s", cfg.name, printable_json(result))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: composer -n N fasthpt/train.py CONFIG [key=value ...]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        result = pretrain(load_config(argv[0], argv[1:]))
    except UserError as exc:
        print(f"fasthpt train: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit) as exc:  # a run's Interrupted says where a relaunch resumes
        code = interrupted_code(exc)
        if code is None:
            raise
        said = str(exc) if isinstance(exc, KeyboardInterrupt) else ""
        print(f"fasthpt train: {said or 'interrupted'}", file=sys.stderr)
        return code
    if dist.get_global_rank() == 0:
        print(printable_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
