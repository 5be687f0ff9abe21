"""The experiment, in the order it runs: data -> base -> direct transfer -> scratch budgets (extended
until converged) -> HPT and HPT-BN budgets -> robustness studies -> analysis -> report.

Every pretraining run is cached (fasthpt.experiment.runs) and so is every evaluation
(fasthpt.experiment.evaluate): a second `fasthpt demo` with the same preset trains and evaluates
nothing and reports again; a preset with more seeds or budgets trains only those.
"""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from pathlib import Path

from fasthpt.errors import UserError
from fasthpt.experiment import analysis
from fasthpt.experiment.evaluate import evaluate
from fasthpt.experiment.preset import DemoConfig, to_yaml
from fasthpt.experiment.runs import Job, Workers, run_all
from fasthpt.manifest import load_manifest

EVALUATIONS = "evaluations"  # <out>/evaluations/*.json: every backbone's evaluation, read back by a later call


class Phases:
    """Wall-clock seconds per phase of the experiment (a phase may be entered several times)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class Experiment:
    def __init__(self, cfg: DemoConfig, out: Path, data_root: Path, force: bool = False, progress: bool = True,
                 parallel: int = 1, say=print):
        self.cfg, self.out, self.data_root, self.force = cfg, Path(out), Path(data_root), force
        self.runs = self.out / "runs"
        self.workers, self.say, self.progress = Workers(parallel), say, progress
        self.phases = Phases()
        self.points: list[dict] = []
        self.evals: dict = {}
        self.target = self.base = None
        self.base_result: dict | None = None  # how the base was trained, when it was trained here

    # ------------------------------------------------------------------ data and base

    def prepare(self) -> None:
        with self.phases("prep"):
            self.target = self._dataset(self.cfg.target)
        if self.cfg.base.checkpoint:
            with self.phases("base"):
                self.base = self._given_base()
        else:
            self.build_base()

    def build_base(self) -> str:
        """The base, built by its chain: each stage MoCo-v2 on its data from the previous stage's
        backbone (the first from random init), stopped at its kNN plateau when it has one."""
        previous, self.base_result = "none", {"stages": []}
        for stage in self.cfg.base.chain:
            with self.phases("prep"):
                data = self._dataset(stage.data)
            with self.phases("base"):
                self.say(f"base chain: MoCo-v2 on {data.name}, up to {stage.iters} iterations")
                plateau = ("train.stop_on_plateau=true", f"train.knn_interval={stage.plateau_interval}ba",
                           f"train.plateau_patience={stage.plateau_patience}",
                           f"train.plateau_delta={stage.plateau_delta}") if stage.plateau_interval else ()
                job = Job("base", stage.iters, 0, str(data), previous, extra=plateau, stage=data.name)
                result = run_all([job], self.cfg, self.runs)[0]
            previous = result["backbone"]
            self.base_result["stages"].append({"data": str(data), **_base_summary(result)})
        self.base = previous
        return previous

    def _dataset(self, spec) -> Path:
        if spec.path:
            load_manifest(spec.path).count("test")  # one line when the folder lacks a test split
            return Path(spec.path)
        import dataprep

        # its own folder: the preset's sizes and splits may differ from `fasthpt prep`'s defaults
        return dataprep.prepare(spec.dataset, out=self.data_root / f"demo-{self.cfg.name}", num_images=spec.num_images,
                                image_size=spec.image_size, val_frac=spec.val_frac, test_frac=spec.test_frac,
                                progress=False, force=self.force)

    def _given_base(self) -> str:
        """A shipped base (``embedded:NAME``, its recipe recorded) or the user's checkpoint, checked
        once; with trust, re-saved as plain tensors so that no run reads the pickle again."""
        from fasthpt.experiment.assets import resolve
        from fasthpt.models.backbones import load_backbone, save_backbone

        path, self.base_result = resolve(self.cfg.base.checkpoint)
        model, report = load_backbone(path, trust=self.cfg.base.trust_checkpoint, in_chans=None)
        if self.cfg.pretrain.arch != report.arch:
            self.say(f"base {self.cfg.base.checkpoint} is a {report.arch}: every run uses it")
            self.cfg.pretrain.arch = report.arch
        if not self.cfg.base.trust_checkpoint:
            return path
        return str(save_backbone(model, self.out / "base-trusted" / "backbone.pt"))

    # ------------------------------------------------------------------ runs and points

    def train_and_evaluate(self, jobs: list[Job], phase: str) -> list[dict]:
        with self.phases(phase):
            results = run_all(jobs, self.cfg, self.runs, self.workers, on_done=self._done)
        points = []
        with self.phases("evaluation"):
            for job, res in zip(jobs, results):
                points.append({"method": job.method, "iterations": job.iterations, "seed": job.seed,
                               **self._eval(res["backbone"]), **_throughput(res),
                               **({"study": {"kind": job.study[0], "condition": job.study[1]}} if job.study else {})})
        self.points += points
        return points

    def _done(self, job: Job, result: dict) -> None:
        how = "reused" if result.get("reused") else f"{result['wall_clock_s']:.0f} s"
        self.say(f"  {job.name}: {how}")

    def _eval(self, backbone: str) -> dict:
        return evaluate(backbone, str(self.target), self.cfg, self.evals, self.out / EVALUATIONS)

    def reference_points(self) -> None:
        """The base itself (direct transfer, the 0-iteration point) and a random init, for reference."""
        with self.phases("evaluation"):
            self.points.append({"method": "direct", "iterations": 0, "seed": 0, **self._eval(self.base)})
            self.points.append({"method": "random", "iterations": 0, "seed": 0, **self._eval(self._random())})

    def _random(self) -> str:
        import torch

        from fasthpt.manifest import load_manifest
        from fasthpt.models.backbones import build_backbone, save_backbone

        bands = load_manifest(self.target).bands  # a random init takes the target's bands, not an adapted RGB conv1
        path = self.out / (f"random-{self.cfg.pretrain.arch}.pt" if bands == 3 else
                           f"random-{self.cfg.pretrain.arch}-{bands}bands.pt")
        if not path.is_file():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                save_backbone(build_backbone(self.cfg.pretrain.arch, in_chans=bands), path)
        return str(path)

    def _jobs(self, method: str, iters: int, base="none", mode="full", study=(), extra=(), seeds=None) -> list[Job]:
        return [Job(method, iters, s, str(self.target), base, mode, study, tuple(extra))
                for s in range(seeds or self.cfg.grid.seeds)]

    # ------------------------------------------------------------------ the main experiment

    def scratch_grid(self) -> dict:
        """Scratch budgets from grid.scratch_start, x scratch_factor, until a step gains nothing
        significant and at most grid.plateau_tol on val (grid.plateau_steps such steps in a row), or the
        next would pass grid.scratch_cap."""
        g, metric = self.cfg.grid, self.cfg.eval.metric
        budgets = [g.scratch_start]
        while True:
            self.say(f"scratch: {budgets[-1]} iterations x {g.seeds} seeds")
            self.train_and_evaluate(self._jobs("scratch", budgets[-1]), "scratch")
            nxt = analysis.extend_grid(self.points, metric, budgets, g.scratch_factor, g.scratch_cap, g.plateau_tol,
                                       g.plateau_steps)
            if nxt is None:
                break
            budgets.append(nxt)
        conv = analysis.convergence(self.points, metric, tol=g.plateau_tol, patience=g.plateau_steps)
        state = "converged" if conv["converged"] else f"NOT converged at the cap ({g.scratch_cap})"
        self.say(f"scratch {state}; best budget {conv['best_iterations']} iterations")
        return conv

    def hpt_grids(self) -> None:
        for method, mode, grid in (("hpt", "full", self.cfg.grid.hpt), ("hpt-bn", "bn", self.cfg.grid.hpt_bn)):
            for iters in grid:
                self.say(f"{method}: {iters} iterations x {self.cfg.grid.seeds} seeds")
                self.train_and_evaluate(self._jobs(method, iters, self.base, mode), method)

    def studies(self, which: list[str], speed: dict, conv: dict) -> None:
        """HPT and scratch, each at one budget, under every condition of the requested studies."""
        from fasthpt.data.policy import PRESETS

        st = self.cfg.study
        hpt_iters = st.hpt_iterations or speed.get("method_iterations") or max(self.cfg.grid.hpt)
        scratch_iters = st.scratch_iterations or conv["best_iterations"]
        conditions = []
        if "augmentation" in which:
            conditions += [("augmentation", "mocov2", ())]
            conditions += [("augmentation", p, tuple(f"data.aug.{k}={v}" for k, v in PRESETS[p].items()))
                           for p in st.policies]
        if "data" in which:
            conditions += [("data", f"{f:g}", self._fraction_overrides(f)) for f in st.fractions]
        for kind, condition, extra in conditions:
            self.say(f"study {kind}: {condition}")
            if not extra and self._reuse_main(kind, condition, {"scratch": scratch_iters, "hpt": hpt_iters}, st.seeds):
                continue  # the unchanged condition is the main experiment's own runs
            jobs = (self._jobs("scratch", scratch_iters, study=(kind, condition), extra=extra, seeds=st.seeds)
                    + self._jobs("hpt", hpt_iters, self.base, study=(kind, condition), extra=extra, seeds=st.seeds))
            self.train_and_evaluate(jobs, f"study {kind}")

    def _reuse_main(self, kind: str, condition: str, budgets: dict, seeds: int) -> bool:
        """Tag the main experiment's points at ``budgets`` as this condition's, when it has them for
        every seed the study asks for."""
        found = [p for p in self.points if not p.get("study") and budgets.get(p["method"]) == p["iterations"]
                 and p["seed"] < seeds]
        if len(found) != len(budgets) * seeds:
            return False
        self.points += [{**p, "study": {"kind": kind, "condition": condition}} for p in found]
        return True

    def _fraction_overrides(self, fraction: float) -> tuple:
        """data.train_fraction, and a queue that still holds fewer keys than the images it draws
        from (a queue longer than the data would hold stale keys of each batch's own images)."""
        if fraction >= 1:
            return ()
        images = round(load_manifest(self.target).count("train") * fraction)
        batch, queue = self.cfg.pretrain.batch_size, self.cfg.pretrain.queue_size
        fitted = max(batch, min(queue, (images // 2) // batch * batch))
        return (f"data.train_fraction={fraction}",) + ((f"model.queue_size={fitted}",) if fitted != queue else ())

    # ------------------------------------------------------------------ all of it

    def run(self, study: list[str], reference: dict | None = None) -> dict:
        with self.workers:
            return self._run(study, reference)

    def _run(self, study: list[str], reference: dict | None) -> dict:
        t0 = time.time()
        self.prepare()
        self.reference_points()
        conv = self.scratch_grid()
        self.hpt_grids()
        metric = self.cfg.eval.metric
        main = [p for p in self.points if not p.get("study")]
        claims = claims_of(main, conv, metric)
        if study:
            self.studies(study, claims["speedup"]["hpt"], conv)
        results = {
            "preset": self.cfg.name, "config": to_yaml(self.cfg), "target": str(self.target), "base": self.base,
            "base_training": self.base_result,
            "metric": metric, "points": self.points, "convergence": conv, "claims": claims,
            "other_metric": _with_convergence(main, _other(metric), self.cfg.grid),
            "studies": {m: analysis.condition_table(self.points, m) for m in ("knn", "linear")} if study else None,
            "phases_s": self.phases.seconds, "wall_clock_s": time.time() - t0,
            "machine": machine(reference),
        }
        return results


def _base_summary(result: dict) -> dict:
    """How the base was trained: iterations, wall-clock, and where its plateau stopped it."""
    plateau = result.get("plateau") or {}
    return {"iterations": result["iterations"], "wall_clock_s": result.get("wall_clock_s"),
            "plateau_stopped": plateau.get("stopped"), "plateau_best_iteration": plateau.get("best_iteration"),
            "source_val_knn": plateau.get("best_value")}


def claims_of(points: list[dict], conv: dict, metric: str) -> dict:
    """The paper's claims 1 and 2 for HPT and HPT-BN, from the main experiment's points."""
    return {
        "speedup": {m: analysis.speedup(points, m, metric, conv) for m in ("hpt", "hpt-bn")},
        "vs_scratch": {m: analysis.accuracy_gain(points, m, metric, "scratch", conv) for m in ("hpt", "hpt-bn")},
        "vs_base": {m: analysis.accuracy_gain(points, m, metric, "direct", conv) for m in ("hpt", "hpt-bn")},
    }


def _with_convergence(points: list[dict], metric: str, grid) -> dict:
    conv = analysis.convergence(points, metric, tol=grid.plateau_tol, patience=grid.plateau_steps)
    return {"convergence": conv, **claims_of(points, conv, metric)}


def _other(metric: str) -> str:
    return "linear" if metric == "knn" else "knn"


def _throughput(res: dict) -> dict:
    """Speed figures of a run; the stored ones when it was found finished (they describe its training)."""
    return {k: res.get(k) for k in ("wall_clock_s", "samples_per_s", "data_stall_frac", "backend")}


def reference_step() -> dict:
    """The machine-speed yardstick of the project's notes: a synthetic MoCo-v2 step (resnet_tiny,
    56 px, batch 64, channels_last, queue 4096, no loader), median of 3 short runs. 161 samples/s on
    the slow 2-core machine a time budget is stated for; scale budgets by the ratio."""
    import statistics
    import tempfile

    from fasthpt.benchmark.training import measure
    from fasthpt.config import load_config

    rates = []
    for _ in range(3):
        with tempfile.TemporaryDirectory(prefix="fasthpt-ref-") as tmp:
            cfg = load_config(None, [f"run_dir={tmp}", "name=ref", "model.arch=resnet_tiny", "data.res=56",
                                     "data.batch_size=64", "model.queue_size=4096", "train.max_duration=13ba",
                                     "train.progress_bar=false", "train.autoresume=false", "train.save_interval=0ba",
                                     "train.log_interval=0ba", "train.algorithms=[channels_last]",
                                     "data.channels_last=true"])
            rates.append(64 / measure(cfg, 3, 10, synthetic=True)["step_s"])
    return {"samples_per_s": statistics.median(rates), "runs": rates, "slow_machine_samples_per_s": 161}


def machine(reference: dict | None) -> dict:
    import os

    import torch

    from fasthpt.device import accelerator_name

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpus": cpus, "processor": platform.processor() or platform.machine(),
            "device": accelerator_name() or "cpu",
            "torch": torch.__version__, "reference_step": reference}


def write_json(path: Path, obj) -> None:
    from fasthpt.fileio import atomic_write_json

    atomic_write_json(path, obj)


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
