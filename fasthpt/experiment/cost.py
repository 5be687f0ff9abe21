"""What `fasthpt demo` will cost, said before the experiment starts (fasthpt.forecast): the
pretraining runs it plans, at most, priced from a few timed synthetic MoCo steps at the preset's own
settings (model, resolution, batch, queue). Runs a previous call finished are reused, so they are
not counted; evaluations are not counted either, so the figure is a floor for what it plans.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fasthpt.experiment.preset import DemoConfig
from fasthpt.experiment.runs import RESULT, Job, run_config
from fasthpt.forecast import Forecast

WARMUP_STEPS, TIMED_STEPS = 3, 10  # as the reference step (fasthpt.experiment.run.reference_step)


def planned_jobs(cfg: DemoConfig, studies: list[str]) -> list[Job]:
    """The pretraining runs the experiment may train (their data left out: only names and budgets
    matter here): the base chain when it builds the base; scratch's x-factor grid up to its cap;
    the HPT and HPT-BN grids; each x grid.seeds; per study condition that is not the main
    experiment's own, scratch and HPT at their study budgets (the largest the main one can choose
    when the preset leaves them to it) x study.seeds."""
    g, st = cfg.grid, cfg.study
    jobs = [] if cfg.base.checkpoint else [Job("base", s.iters, 0, "", stage=_stage(s.data)) for s in cfg.base.chain]
    budgets = scratch_budgets(g)
    grids = (("scratch", budgets, "full"), ("hpt", g.hpt, "full"), ("hpt-bn", g.hpt_bn, "bn"))
    jobs += [Job(m, b, s, "", mode=mode) for m, grid, mode in grids for b in grid for s in range(g.seeds)]
    conditions = [("augmentation", p) for p in st.policies if "augmentation" in studies]
    conditions += [("data", f"{f:g}") for f in st.fractions if "data" in studies and f < 1]
    study_budgets = {"scratch": st.scratch_iterations or budgets[-1], "hpt": st.hpt_iterations or max(g.hpt)}
    jobs += [Job(m, b, s, "", study=c) for c in conditions for m, b in study_budgets.items() for s in range(st.seeds)]
    return jobs


def scratch_budgets(g) -> list[int]:
    """Scratch's budgets up to its cap: grid.scratch_start, x grid.scratch_factor each step."""
    budgets = [g.scratch_start]
    while budgets[-1] * g.scratch_factor <= g.scratch_cap:
        budgets.append(budgets[-1] * g.scratch_factor)
    return budgets


def _stage(spec) -> str:
    """The base-chain stage's name, as the experiment names it: its dataset folder's."""
    return Path(spec.path).name if spec.path else spec.dataset


def step_seconds(cfg: DemoConfig) -> float:
    """Seconds per MoCo step at the preset's pretrain settings: a short synthetic run (no loader),
    TIMED_STEPS timed after WARMUP_STEPS (fasthpt.benchmark.training.measure)."""
    from fasthpt.benchmark.training import measure

    with tempfile.TemporaryDirectory(prefix="fasthpt-cost-") as tmp:
        run = run_config(Job("scratch", WARMUP_STEPS + TIMED_STEPS, 0, tmp), cfg, Path(tmp))
        run.data.channels_last = "channels_last" in run.train.algorithms  # the batches a real run's loader gives
        return measure(run, WARMUP_STEPS, TIMED_STEPS, synthetic=True)["step_s"]


def forecast_demo(cfg: DemoConfig, studies: list[str], out: Path) -> str | None:
    """Say the cost of the runs the experiment plans that ``out`` does not already hold (on the
    CPU, when long); returns what was said."""
    from fasthpt.device import trainer_device

    todo = [j for j in planned_jobs(cfg, studies) if not (out / "runs" / j.name / RESULT).is_file()]
    if not todo or trainer_device() != "cpu":
        return None
    batch = {"base": cfg.base.pretrain.batch_size}
    images = sum(j.iterations * batch.get(j.method, cfg.pretrain.batch_size) for j in todo)
    fc = Forecast(f"this demo's {len(todo)} pretraining runs", images, "pretraining images",
                  "--scale tiny, grid.seeds=1, fewer --study, or a GPU")
    per_image = step_seconds(cfg) / cfg.pretrain.batch_size
    return fc.settle(per_image, f"from {TIMED_STEPS} synthetic MoCo steps at the preset's settings after "
                                f"{WARMUP_STEPS} warm-up ones; loading and evaluation not counted")
