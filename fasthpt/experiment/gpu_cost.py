"""What a demo preset is expected to cost on one GPU before any GPU has run it: each phase's seconds
from the rates measured on one H200 (bench/RESULTS.md, "On a GPU: one H200"; raw rows in bench/gpu/)
and on the 2-core development VM, scaled to the preset. An estimate, never a measurement: the
preset's own GPU run is what measures it (its results.json holds every phase's seconds).

Scaling rule for a MoCo step: a launch floor plus the arithmetic, times the FFCV-fed factor.
- Floor: the demo's reference step on the H200 (resnet_tiny, 56 px, batch 64, bf16, no loader,
  26.9 ms) less its own arithmetic. At that size the GPU waits on Python and kernel launches, and
  resnet_micro launches the same kernels, so its step cannot be faster whatever its FLOPs.
- Arithmetic: ResNet-50's measured step (224 px, batch 128, bf16: 70.1 ms) scaled by the
  backbone's FLOPs at the preset's resolution and by the batch. FLOP scaling alone would promise
  resnet_micro at 32 px ~1,000x ResNet-50's rate: it over-promises small models, hence the floor.
- Fed by FFCV: x 1,825 / 1,720 (the step with and without FFCV at ResNet-50).
Uncertainty (the `high` figures): the floor was timed once (3 x 10 steps) on the H200's host
CPU; an H100 host with a slower CPU, or more per-step work in the loop, could double it; narrow
convolutions may run at a tenth of ResNet-50's FLOP rate; set-up costs scaled from the VM may be
1.5x off. The point figure assumes none of these, the high one all of them.

Set-up costs the H200 run did not isolate were measured on the VM (FFCV compiles each loader's
numba pipeline: 7.1 s per training loader, 8.3 s per evaluation's three split loaders; the
torch backend's loaders take ~1 s) and scaled to the H200's host by the one cost measured on both
machines: FFCV's import and first loader, 16.8 s there, 21.0 s here (x 0.80). The torch loader
trains at its own rate where that is slower than the step (CPU augmentation: 639 samples/s on the
VM's 2 workers at 32 px, scaled by the host and the preset's workers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from fasthpt.errors import UserError
from fasthpt.experiment.cost import planned_jobs, scratch_budgets
from fasthpt.experiment.preset import DemoConfig, PretrainSpec
from fasthpt.experiment.runs import RESULT

# --- measured on one H200 (2026-11-30, git 2118313; bench/gpu/train.jsonl, gpu_check.jsonl, .log)
H200_REFERENCE_STEP_S = 64 / 2379  # `demo`'s reference step: resnet_tiny 56 px batch 64 bf16, no loader
H200_RN50_STEP_S = 128 / 1825  # ResNet-50 MoCo-v2 224 px batch 128 bf16, no loader
H200_FFCV_FED = 1825 / 1720  # the ResNet-50 step fed by FFCV over its step on fixed tensors
# `bench train` (synthetic, one process, 28 s) less its 50 steps: start, imports, CUDA, trainer (24.5 s)
H200_PROCESS_S = 28 - 50 * H200_RN50_STEP_S
# the FFCV-fed process (45 s) less its steps and that: FFCV's import and first loader (16.8 s)
H200_FFCV_FIRST_S = 45 - 50 * 128 / 1720 - H200_PROCESS_S
H200_PREP_IMAGES_S = 1205  # `demo --scale large` prepared sat-target (12,000 images, 96 px) end to end, 16 workers
# --- measured on the 2-core development VM (2026-12-07, quiet: reference step 356 samples/s; sat-target
# at 32 px; bench/RESULTS.md)
VM_FFCV_FIRST_S = 5.14 + 15.85  # FFCV's import + the first training loader of a process (CPU seconds)
VM_FFCV_LOADER_S = 7.14  # each later training loader (its pipeline compiled again)
VM_FFCV_EVAL_S = 8.31  # an evaluation's three split loaders (train, val, test), FFCV
VM_TORCH_LOADER_S = 0.66  # a torch training loader's start (2 workers, to its first batch)
VM_TORCH_SAMPLE_S = 2 / 639  # its two views of one sample, per worker: 639 samples/s on 2 workers
VM_TORCH_EVAL_S = 1.24 * 2 / 3000  # its three split loaders: 3,000 images in 1.24 s on 2 workers, per image-worker
VM_RUN_S = 0.9  # a run's set-up besides its loader (config, trainer, checkpoint, backbone file)
# --- derived
HOST = H200_FFCV_FIRST_S / VM_FFCV_FIRST_S  # the H200's host does the VM's single-thread work in 0.80 of its time
GPU_EVAL_S = 1.0  # estimate: features of every split, the kNN (k, t) grid and a 300-step probe on the GPU
REFERENCE_RUNS, REFERENCE_STEPS = 3, 13  # fasthpt.experiment.run.reference_step
HIGH_FLOOR, HIGH_FLOPS, HIGH_SETUP = 2.0, 10.0, 1.5  # the uncertainty above, each at its pessimistic end
LOADERS = ("ffcv", "auto", "torch")  # training backends with rates (`auto` is FFCV on the GPU machine)

@dataclass(frozen=True)
class Step:
    """One MoCo step of a preset's runs on the GPU: seconds (point and high) and what they are made of."""

    floor_s: float
    flops_s: float
    fed: float = H200_FFCV_FED  # FFCV's cost at ResNet-50; the torch loader is priced by its own rate instead
    loader_s: float = 0.0  # a loader that cannot keep up: its seconds per batch

    @property
    def seconds(self) -> float:
        return max(self.fed * (self.floor_s + self.flops_s), self.loader_s)

    @property
    def high_s(self) -> float:
        return max(self.fed * (HIGH_FLOOR * self.floor_s + HIGH_FLOPS * self.flops_s), HIGH_SETUP * self.loader_s)


@cache
def flops(arch: str, res: int) -> float:
    """Forward FLOPs of one image through ``arch`` at ``res`` px (torch's FLOP counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fasthpt.models.backbones import build_backbone

    model = build_backbone(arch).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, res, res))
    return float(counter.get_total_flops())


def step(p: PretrainSpec, _flops=flops) -> Step:
    """The MoCo step of ``p`` on the GPU, by the scaling rule of the module doc; the torch loader
    (CPU augmentation in its workers) at its rate measured on the VM, scaled to the host."""
    if p.backend not in LOADERS:
        raise UserError(f"no measured GPU rate for pretrain.backend={p.backend}: the GPU estimate covers "
                        f"{', '.join(LOADERS)} (`auto` and ffcv: FFCV -> CUDA)")
    per_flop = H200_RN50_STEP_S / 128 / _flops("resnet50", 224)  # seconds per image-FLOP at ResNet-50
    floor = H200_REFERENCE_STEP_S - 64 * _flops("resnet_tiny", 56) * per_flop
    arithmetic = p.batch_size * _flops(p.arch, p.res) * per_flop
    if p.backend == "torch":
        return Step(floor, arithmetic, fed=1.0, loader_s=p.batch_size * HOST * VM_TORCH_SAMPLE_S / max(1, p.workers))
    return Step(floor, arithmetic)


def setup_seconds(p: PretrainSpec) -> float:
    """A run's set-up on the GPU host: its loader (FFCV compiles its pipeline) and the rest."""
    return HOST * ((VM_TORCH_LOADER_S if p.backend == "torch" else VM_FFCV_LOADER_S) + VM_RUN_S)


def eval_seconds(cfg: DemoConfig, images: int) -> float:
    """One backbone's evaluation (kNN and linear probe on features of every split)."""
    backend = cfg.eval.backend or cfg.pretrain.backend
    loaders = VM_TORCH_EVAL_S * images / max(1, cfg.pretrain.workers) if backend == "torch" else VM_FFCV_EVAL_S
    return GPU_EVAL_S + HOST * loaders


def finished(cfg: DemoConfig, studies: list[str], out: Path | None) -> set[str]:
    """Names of the planned runs that ``out`` holds finished (a later call reads them back)."""
    if out is None:
        return set()
    return {j.name for j in planned_jobs(cfg, studies) if (Path(out) / "runs" / j.name / RESULT).is_file()}


def plan(cfg: DemoConfig, studies: list[str] | None = None, out: Path | None = None, _flops=flops,
         done: set[str] | None = None) -> dict:
    """Expected seconds per phase of ``fasthpt demo`` with ``cfg`` on one GPU, at most: the scratch
    grid up to its cap. Runs already finished (in ``out``, or named in ``done``) cost nothing: a
    later call reads their results and evaluations back."""
    studies = studies or []
    done = (done or set()) | finished(cfg, studies, out)
    s = step(cfg.pretrain, _flops)
    base_step = None if cfg.base.checkpoint else step(cfg.base.pretrain, _flops)
    images = cfg.target.num_images
    ffcv = any(p.backend != "torch" for p in [cfg.pretrain] + ([cfg.base.pretrain] if base_step else []))
    phases = {"start": H200_PROCESS_S + REFERENCE_RUNS * (REFERENCE_STEPS * H200_REFERENCE_STEP_S + HOST * VM_RUN_S)
              + (H200_FFCV_FIRST_S - HOST * VM_FFCV_LOADER_S if ffcv else 0.0),  # the first FFCV loader's extra
              "prep": (images + sum(st.data.num_images for st in cfg.base.chain if base_step)) / H200_PREP_IMAGES_S}
    train = {"point": 0.0, "high": 0.0}
    evaluations = 2  # the base itself (direct transfer) and a random init
    jobs = planned_jobs(cfg, studies)
    for job in jobs:
        phase = "base" if job.method == "base" else ("studies" if job.study else job.method)
        phases.setdefault(phase, 0.0)
        if job.name in done:
            continue  # read back with its evaluation (fasthpt.experiment.evaluate), not trained
        st = base_step if job.method == "base" else s
        phases[phase] += setup_seconds(cfg.base.pretrain if job.method == "base" else cfg.pretrain) \
            + job.iterations * st.seconds
        train["point"] += job.iterations * st.seconds
        train["high"] += job.iterations * st.high_s
        evaluations += job.method != "base"
    phases["evaluation"] = evaluations * eval_seconds(cfg, images)
    total = sum(phases.values())
    fixed = total - train["point"]
    return {"device": "one H200 (rates measured there, and on the 2-core VM for set-up costs; an estimate)",
            "phases_s": {k: round(v, 1) for k, v in phases.items()}, "total_s": round(total, 1),
            "high_s": round(fixed * HIGH_SETUP + train["high"], 1), "training_s": round(train["point"], 1),
            "step_s": round(s.seconds, 4), "step_high_s": round(s.high_s, 4),
            "samples_per_s": round(cfg.pretrain.batch_size / s.seconds), "evaluations": evaluations,
            "runs": len(jobs) - len(done & {j.name for j in jobs}), "scratch_cap": cfg.grid.scratch_cap}


def with_cap(cfg: DemoConfig, cap: int) -> DemoConfig:
    return replace(cfg, grid=replace(cfg.grid, scratch_cap=cap))


def fit(cfg: DemoConfig, studies: list[str], budget_s: float, out: Path | None = None, _flops=flops,
        done: set[str] | None = None) -> tuple[int, dict]:
    """The largest scratch cap of ``cfg``'s grid (at most its own) whose plan fits ``budget_s``
    seconds, with that plan; the first budget when none fits (the call then runs past its budget)."""
    best = None
    for cap in scratch_budgets(cfg.grid):
        p = plan(with_cap(cfg, cap), studies, out, _flops, done)
        if best is None or p["total_s"] <= budget_s:
            best = (cap, p)
    return best


def calls(cfg: DemoConfig, studies: list[str], budget_s: float, out: Path | None = None, _flops=flops,
          limit: int = 20) -> list[dict]:
    """The calls of ``budget_s`` seconds that take the whole preset to its cap, each resuming from
    the runs of the ones before (and of ``out``): their plans, in order. It stops where a call could
    add no budget: then the last plan's cap is below the preset's."""
    done = finished(cfg, studies, out)
    plans: list[dict] = []
    while len(plans) < limit:
        cap, p = fit(cfg, studies, budget_s, None, _flops, done)
        if p["runs"] == 0 or (plans and p["total_s"] > budget_s):
            break
        plans.append(p)
        done |= {j.name for j in planned_jobs(with_cap(cfg, cap), studies)}
        if cap == cfg.grid.scratch_cap:
            break
    return plans


def describe(p: dict) -> str:
    """The plan as the lines `fasthpt demo --plan` prints."""
    lines = [f"expected on {p['device']}:"]
    lines += [f"  {name:<11} {sec:7.1f} s" for name, sec in p["phases_s"].items()]
    lines.append(f"  {'total':<11} {p['total_s']:7.1f} s  (up to {p['high_s']:.0f} s at the pessimistic end of "
                 f"each uncertainty; fasthpt/experiment/gpu_cost.py)")
    lines.append(f"  {p['runs']} pretraining runs, {p['evaluations']} evaluations; a MoCo step "
                 f"{p['step_s'] * 1000:.1f} ms (up to {p['step_high_s'] * 1000:.0f} ms), "
                 f"{p['samples_per_s']:,} samples/s")
    if "calls" in p:
        caps = [c["scratch_cap"] for c in p["calls"]]
        whole = (f"the whole preset (scratch up to {p['preset_scratch_cap']}): {len(caps)} call(s) of "
                 f"{p['budget_s']:.0f} s, scratch up to {', '.join(map(str, caps))}")
        if not caps or caps[-1] < p["preset_scratch_cap"]:
            whole += f"; no call of {p['budget_s']:.0f} s can add the next budget (all its seeds)"
        lines.append("  " + whole)
    return "\n".join(lines)


def expected_on_gpu(cfg: DemoConfig, studies: list[str], out: Path, say=print) -> dict | None:
    """On a GPU, the plan of what this call of the demo will run, said before it starts (and kept in
    results.json beside the phases it measures); None on a CPU or for a backend without GPU rates."""
    from fasthpt.device import trainer_device

    if trainer_device() == "cpu":
        return None
    try:
        p = plan(cfg, studies, out)
    except UserError as exc:
        say(f"no GPU estimate: {exc}")
        return None
    say(describe(p))
    return p
