"""HPT pretraining on Composer: one config -> one run (or its chain of stages).

    composer -n N fasthpt/train.py CONFIG [key=value ...]   # N processes (multi-node: launcher flags)
    fasthpt pretrain CONFIG [key=value ...]                 # one process
    from fasthpt.train import pretrain; pretrain(cfg)       # library

A run writes runs/<name>/{config.yaml, checkpoints/, backbone.pt, metrics.jsonl}; with
``stages`` each stage writes those into runs/<name>/<stage>/ and its backbone.pt is the next
stage's base.
"""

import os
import sys

if __name__ == "__main__":  # run as a script (Composer's launcher): keep fasthpt/ itself off sys.path,
    _here = os.path.dirname(os.path.abspath(__file__))  # so data/, models/, config.py shadow nothing
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from fasthpt.config import RunConfig, check_queue, load_config, save_config, validate  # noqa: E402
from fasthpt.errors import UserError  # noqa: E402

log = logging.getLogger("fasthpt.train")


def pretrain(cfg: RunConfig) -> dict:
    """Run ``cfg`` (every stage in order when ``cfg.stages``). Returns run_dir, backbone (path of
    the final backbone.pt), iterations (total batches trained, resumed ones included),
    iterations_this_launch, wall_clock_s / samples_per_s / data_stall_frac (this launch),
    backend, world_size, ranks_in_sync, and with stages a list of the same per stage."""
    from fasthpt.hpt import stage_configs

    validate(cfg)  # a RunConfig built in code gets the checks a loaded one had
    if not cfg.stages:
        return run_stage(cfg)
    from composer.utils import dist

    from fasthpt.run_folder import claim

    _init_dist()
    lock = claim(cfg)
    try:
        if dist.get_global_rank() == 0:
            save_config(cfg, cfg.run_path / "config.yaml")
        results = [run_stage(stage) for stage in stage_configs(cfg)]
        final = cfg.run_path / "backbone.pt"
        if dist.get_global_rank() == 0:
            tmp = final.with_suffix(".pt.tmp")
            shutil.copyfile(results[-1]["backbone"], tmp)
            tmp.replace(final)
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


def _device() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def _init_dist() -> None:
    from composer.utils import dist

    dist.initialize_dist(_device())


def resolve_precision(precision: str, device: str) -> str:
    """auto: amp_bf16 on a GPU, fp32 on the CPU (Composer's CPU device runs fp32 only)."""
    if precision == "auto":
        return "amp_bf16" if device == "gpu" else "fp32"
    if device == "cpu" and precision != "fp32":
        raise UserError(f"train.precision={precision} needs a GPU; use fp32 or auto on the CPU")
    return precision


def batches(value: str, key: str) -> int:
    """'500ba' -> 500 (intervals are counted in batches)."""
    from composer.core import Time, TimeUnit

    try:
        t = Time.from_timestring(value)
    except ValueError:
        raise UserError(f"{key}={value!r} is not a duration like '500ba'") from None
    if t.unit != TimeUnit.BATCH:
        raise UserError(f"{key}={value!r}: give it in batches, e.g. '500ba'")
    return int(t.value)


def run_stage(cfg: RunConfig, *, callbacks: tuple = (), loader=None) -> dict:
    """One MoCo-v2 / HPT run (no stages) on this process' share of the job. ``callbacks`` are
    added to the Trainer's; ``loader`` replaces the one built from ``cfg.data`` (benchmarks).
    Before any heavy work: the config's ranges (the queue's against the world size), then the run
    folder (writable, not another run's, not in use: fasthpt.run_folder.claim)."""
    from composer.utils import dist

    from fasthpt.run_folder import claim

    validate(cfg)
    _init_dist()
    check_queue(cfg, dist.get_world_size())
    lock = claim(cfg)
    try:
        return _train(cfg, callbacks, loader)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RunConfig, callbacks: tuple, loader) -> dict:
    from composer.utils import dist

    from fasthpt.run_folder import Interrupted, resume_hint, write_failure
    from fasthpt.trainer_setup import build_trainer

    rank = dist.get_global_rank()
    run = cfg.run_path
    parts = None
    try:
        parts = build_trainer(cfg, _device(), resolve_precision(cfg.train.precision, _device()), callbacks=callbacks,
                              loader=loader)
        if rank == 0:  # only once the base, the data and the config have all been accepted
            save_config(cfg, run / "config.yaml")
        start_batch, start_sample = int(parts.trainer.state.timestamp.batch), int(parts.trainer.state.timestamp.sample)
        t0 = time.perf_counter()
        # a run resumed from its final checkpoint, or from where its plateau stopped it, is already
        # done: Composer would refuse to fit, or would train on past the plateau
        stopped = parts.monitor is not None and parts.monitor.stopped_at is not None
        if start_batch < batches(cfg.train.max_duration, "train.max_duration") and not stopped:
            parts.trainer.fit()
    except KeyboardInterrupt:
        where = f"at batch {int(parts.trainer.state.timestamp.batch)}" if parts else "before training started"
        raise Interrupted(f"interrupted {where}; {resume_hint(cfg)}") from None
    except (OSError, RuntimeError) as exc:
        failure = write_failure(exc, run)
        if failure is None:
            raise
        raise UserError(f"{failure}; free some space, then {resume_hint(cfg)}") from None
    wall = time.perf_counter() - t0
    return _finish(cfg, parts, start_batch, start_sample, wall)


def _finish(cfg: RunConfig, parts, start_batch: int, start_sample: int, wall: float) -> dict:
    """backbone.pt (rank 0), the replicas' agreement, and the run's summary."""
    from composer.utils import dist

    trainer, moco, loader, stall = parts.trainer, parts.moco, parts.loader, parts.stall
    rank, run = dist.get_global_rank(), cfg.run_path
    done_batch, done_sample = int(trainer.state.timestamp.batch), int(trainer.state.timestamp.sample)
    from fasthpt.models.moco import replicas_in_sync

    # BN running statistics are per process by design (shuffle-BN); weights and queue must agree.
    in_sync = replicas_in_sync(list(moco.encoder_k.parameters()) + [moco.queue])
    backbone = run / "backbone.pt"
    if rank == 0:
        from fasthpt.models.backbones import save_backbone

        save_backbone(moco.backbone, backbone)
    trainer.close()
    dist.barrier()
    result = {
        "run_dir": str(run), "backbone": str(backbone), "iterations": done_batch,
        "iterations_this_launch": done_batch - start_batch, "wall_clock_s": wall,
        "samples_per_s": (done_sample - start_sample) / wall if wall > 0 else 0.0,
        "data_stall_frac": stall.stall_frac, "backend": getattr(loader, "backend", "?"),
        "base": parts.report.summary(), "world_size": dist.get_world_size(), "ranks_in_sync": in_sync,
        "plateau": parts.monitor.plateau_result() if parts.monitor is not None else None,
    }
    if rank == 0:
        if result["plateau"] is not None:
            _write_json(run / "plateau.json", result["plateau"])
        log.info("run %s: %s", cfg.name, json.dumps(result))
    return result


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


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
    except KeyboardInterrupt as exc:  # fasthpt.run_folder.Interrupted says where a relaunch resumes
        print(f"fasthpt train: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130
    from composer.utils import dist

    if dist.get_global_rank() == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
