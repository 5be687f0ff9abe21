"""The experiment's pretraining runs: one fasthpt run per (method, budget, seed[, study condition]),
each with its own cosine schedule, cached on disk and optionally run several at a time (Workers).

A finished run is found again by its folder's ``demo_result.json``, which holds the exact resolved
config it was trained with: the same config is never trained twice; another config under the same
name is refused by the run folder itself (fasthpt.run_folder), never overwritten.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fasthpt.config import RunConfig, load_config, to_yaml
from fasthpt.experiment.preset import DemoConfig
from fasthpt.fileio import atomic_write_json

RESULT = "demo_result.json"


@dataclass(frozen=True)
class Job:
    """One pretraining run of the experiment."""

    method: str  # base (a stage of the base's chain) | scratch | hpt | hpt-bn
    iterations: int
    seed: int
    data: str  # the prepared folder it trains on
    base: str = "none"  # checkpoint it starts from
    mode: str = "full"  # full | bn (HPT-BN)
    study: tuple = ()  # (kind, condition) for a robustness-study run
    extra: tuple = field(default_factory=tuple)  # further key=value overrides (the study's condition)

    stage: str = ""  # the base chain's stage (its dataset's name)

    @property
    def name(self) -> str:
        if self.method == "base":
            return f"base-{self.stage}-{self.iterations}"
        study = f"study-{self.study[0]}-{self.study[1]}-" if self.study else ""
        return f"{study}{self.method}-{self.iterations}-s{self.seed}"


def run_config(job: Job, cfg: DemoConfig, runs: Path) -> RunConfig:
    """The run config of ``job``: the base chain's settings for its stages, the experiment's otherwise."""
    p = cfg.base.pretrain if job.method == "base" else cfg.pretrain
    algorithms = "[" + ",".join(p.algorithms) + "]"
    return load_config(None, [
        f"name={job.name}", f"run_dir={runs}", f"data.path={job.data}", f"data.backend={p.backend}",
        f"data.res={p.res}", f"data.batch_size={p.batch_size}", f"data.workers={p.workers}",
        f"model.arch={p.arch}", f"model.queue_size={p.queue_size}", f"optim.lr={p.lr}",
        f"hpt.base={job.base}", f"hpt.mode={job.mode}", f"hpt.trust_checkpoint={cfg.base.trust_checkpoint}",
        f"train.max_duration={job.iterations}ba", f"train.save_interval={job.iterations}ba",
        f"train.seed={job.seed}", "train.progress_bar=false", "train.console_log=false", "train.log_interval=0ba",
        "train.knn_interval=0ba", f"train.algorithms={algorithms}", *p.overrides, *job.extra,
    ])


def cached(run: RunConfig) -> dict | None:
    """The stored result of a finished run trained with exactly this config, else None."""
    path = run.run_path / RESULT
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if prev.get("config") != to_yaml(run) or not Path(prev.get("backbone", "")).is_file():
        return None
    return {**prev, "reused": True}


def train(run: RunConfig) -> dict:
    """Pretrain ``run`` and store its result beside it (atomically)."""
    from fasthpt.train import pretrain

    result = {k: v for k, v in pretrain(run).items() if k != "stages"}
    result["config"] = to_yaml(run)
    atomic_write_json(run.run_path / RESULT, result)
    return result


def _train_in_worker(run: RunConfig, threads: int) -> dict:
    import logging

    import torch

    torch.set_num_threads(threads)
    logging.getLogger("fasthpt").setLevel(logging.WARNING)
    return train(run)


class Workers:
    """Processes that train an experiment's runs ``parallel`` at a time, kept for the whole
    experiment (``with Workers(n) as w``): each pays its start once (imports, on a GPU its CUDA
    context and FFCV's first pipeline compile, ~40 s on the H200's host) rather than once per
    budget. On one GPU the processes share the device: where a small model's steps wait on Python
    and kernel launches, several at once may keep it busier. Not measured yet on a GPU: a tested
    option (`fasthpt demo --parallel N`), not a claimed gain."""

    def __init__(self, parallel: int = 1):
        self.parallel = parallel
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, run: RunConfig):
        if self._pool is None:
            import multiprocessing as mp

            self._pool = ProcessPoolExecutor(max_workers=self.parallel, mp_context=mp.get_context("spawn"))
        return self._pool.submit(_train_in_worker, run, max(1, _cores() // self.parallel))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_all(jobs: list[Job], cfg: DemoConfig, runs: Path, workers: Workers | None = None, on_done=None) -> list[dict]:
    """Results of ``jobs`` in order: cached ones read back, the others trained, in this process or
    by ``workers`` (``workers.parallel`` at a time, each with cores / parallel threads).
    ``on_done(job, result)`` is called as each finishes (progress)."""
    configs = [run_config(job, cfg, runs) for job in jobs]
    results: list[dict | None] = [cached(c) for c in configs]
    todo = [i for i, r in enumerate(results) if r is None]
    for i, r in enumerate(results):
        if r is not None and on_done:
            on_done(jobs[i], r)
    if workers is None or workers.parallel <= 1 or len(todo) <= 1:
        for i in todo:
            results[i] = train(configs[i])
            if on_done:
                on_done(jobs[i], results[i])
        return results
    futures = {workers.submit(configs[i]): i for i in todo}
    for future in _as_completed(futures):
        i = futures[future]
        results[i] = future.result()
        if on_done:
            on_done(jobs[i], results[i])
    return results


def _as_completed(futures):
    from concurrent.futures import as_completed

    return as_completed(futures)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
