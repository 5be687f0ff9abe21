"""`fasthpt demo`: HPT's headline experiment, end to end, on the embedded data or your own.

    fasthpt demo                                   # the default preset (configs/demo.yaml)
    fasthpt demo --study all                       # + the augmentation and data-amount studies
    fasthpt demo --target data/resisc45 --base moco_v2_800ep_pretrain.pth.tar --scale large
    fasthpt demo --config my-demo.yaml grid.seeds=5
    fasthpt demo --scale gpu --plan --budget-s 296  # expected GPU seconds per phase, and the calls it takes

Writes <out>/report.md, convergence.png (robustness.png with a study) and results.json (every
seed's numbers). Finished pretraining runs and their evaluations are reused: a second call trains
and evaluates nothing new, and a call fitted to a time (--budget-s) goes on from the one before.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fasthpt.experiment.preset import STUDIES, scales

    p.add_argument("--scale", choices=scales(), default="default",
                   help="preset: configs/demo.yaml (default) or configs/demo-SCALE.yaml (default: %(default)s)")
    p.add_argument("--config", default=None, help="a demo preset YAML of your own (instead of --scale)")
    p.add_argument("--target", default=None, help="a `fasthpt prep` folder to run the experiment on (train/val/test)")
    p.add_argument("--base", default=None, help="the base checkpoint HPT starts from (instead of pretraining one)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="--base may be unpickled in full, running any code it names: only for a file you trust")
    p.add_argument("--study", choices=[*STUDIES, "all"], action="append", default=[],
                   help="also run a robustness study (repeatable)")
    p.add_argument("--out", default=None, help="run and report folder (default: runs/demo, or runs/demo-SCALE)")
    p.add_argument("--data", default="data", help="where the embedded datasets are prepared (default: %(default)s)")
    p.add_argument("--parallel", type=int, default=None,
                   help="pretraining runs at once, each on cores/N threads (default: the preset's)")
    p.add_argument("--no-reference", action="store_true", help="skip measuring the machine's reference step")
    p.add_argument("--force", action="store_true", help="rebuild the embedded datasets (runs are reused by config)")
    p.add_argument("--build-base", metavar="PATH", default=None,
                   help="only build the preset's base by its chain and write it to PATH (.pt, recipe in .json): "
                        "how the shipped base in fasthpt/assets was made (make demo-base)")
    p.add_argument("--plan", action="store_true",
                   help="print the expected seconds of each phase on one GPU, from the rates measured on an H200 "
                        "(fasthpt/experiment/gpu_cost.py), and exit: nothing is prepared or trained")
    p.add_argument("--json", action="store_true", help="with --plan: the plan as one JSON object")
    p.add_argument("--budget-s", type=float, default=None, metavar="SECONDS",
                   help="fit this call to SECONDS on one GPU: scratch's cap is lowered to the largest budget of its "
                        "grid whose estimate fits (runs finished in --out not counted); a later call goes on from "
                        "this one's runs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="preset overrides, e.g. grid.seeds=5")


def run(args: argparse.Namespace) -> int:
    from fasthpt.errors import UserError
    from fasthpt.experiment.cost import forecast_demo
    from fasthpt.experiment.gpu_cost import expected_on_gpu
    from fasthpt.experiment.preset import STUDIES, load_preset, preset_path
    from fasthpt.experiment.run import Experiment, check_out, reference_step, write_json
    from fasthpt.fileio import atomic_write_text
    from fasthpt.report import plot_convergence, plot_robustness, render

    overrides = list(args.overrides)
    if args.target:
        overrides.append(f"target.path={args.target}")
    if args.base:
        overrides += [f"base.checkpoint={args.base}", f"base.trust_checkpoint={args.trust_checkpoint}"]
    cfg = load_preset(args.config or preset_path(args.scale), overrides)
    parallel = args.parallel if args.parallel is not None else cfg.pretrain.parallel_runs
    if parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {parallel}")
    out = Path(args.out or ("runs/demo" if args.scale == "default" and not args.config else f"runs/demo-{cfg.name}"))
    check_out(out)
    studies = list(STUDIES) if "all" in args.study else list(dict.fromkeys(args.study))
    if args.json and not args.plan:
        raise UserError("--json goes with --plan")
    preset_cap = cfg.grid.scratch_cap
    if args.budget_s is not None:
        _fit(cfg, studies, out, args.budget_s, say=print if not args.json else lambda msg: None)
    if args.plan:
        return _plan(cfg, studies, out, args.json, args.budget_s, preset_cap)
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("fasthpt").setLevel(logging.WARNING)
    reference = None if args.no_reference else reference_step()
    if reference:
        print(f"reference MoCo step: {reference['samples_per_s']:.0f} samples/s on this machine "
              f"(the 20-minute budget is stated at 161)", flush=True)
    exp = Experiment(cfg, out, Path(args.data), force=args.force, parallel=parallel,
                     say=lambda msg: print(msg, flush=True))
    if args.build_base:
        return _build_base(exp, Path(args.build_base), reference)
    forecast_demo(cfg, studies, out)  # a long experiment says its cost before it starts
    expected = expected_on_gpu(cfg, studies, out)  # on a GPU: the estimate its run measures
    results = exp.run(studies, reference)
    if expected:
        results["expected_on_gpu"] = expected
    write_json(out / "results.json", results)
    plot_convergence(results["points"], results["convergence"], out / "convergence.png", results["metric"])
    if results.get("studies"):
        plot_robustness(results["studies"][results["metric"]], out / "robustness.png", results["metric"])
    report = render(results)
    atomic_write_text(out / "report.md", report)
    print(report.split("## Accuracy per method")[0])
    print(f"report: {out / 'report.md'} ({results['wall_clock_s'] / 60:.1f} min)")
    return 0


def _fit(cfg, studies: list[str], out: Path, budget_s: float, say) -> None:
    """`--budget-s`: lower ``cfg``'s scratch cap to what one call of ``budget_s`` seconds can train."""
    from fasthpt.errors import UserError
    from fasthpt.experiment import gpu_cost

    if not (0 < budget_s < float("inf")):
        raise UserError(f"--budget-s must be a number of seconds > 0, got {budget_s:g}")
    cap, plan = gpu_cost.fit(cfg, studies, budget_s, out)
    if plan["total_s"] > budget_s:
        say(f"note: even scratch's first budget is expected to take {plan['total_s']:.0f} s on one GPU, over the "
            f"--budget-s {budget_s:.0f}")
    elif cap < cfg.grid.scratch_cap:
        say(f"this call: scratch up to {cap} iterations of the preset's {cfg.grid.scratch_cap}, expected "
            f"{plan['total_s']:.0f} s of the --budget-s {budget_s:.0f} on one GPU; call again with the same --out "
            f"to go on from its runs")
    cfg.grid.scratch_cap = cap


def _plan(cfg, studies: list[str], out: Path, as_json: bool, budget_s: float | None, preset_cap: int) -> int:
    """`--plan`: the GPU estimate of the experiment (runs already finished in ``out`` cost nothing);
    with a budget, the calls of that budget the whole preset takes."""
    import json

    from fasthpt.experiment import gpu_cost

    plan = gpu_cost.plan(cfg, studies, out)
    if budget_s is not None:
        full = gpu_cost.with_cap(cfg, preset_cap)
        plan["calls"] = [{"scratch_cap": c["scratch_cap"], "total_s": c["total_s"]}
                         for c in gpu_cost.calls(full, studies, budget_s, out)]
        plan["preset_scratch_cap"] = preset_cap
        plan["budget_s"] = budget_s
    print(json.dumps(plan) if as_json else gpu_cost.describe(plan))
    return 0


def _build_base(exp, path: Path, reference: dict | None) -> int:
    """Train the preset's base chain (cached runs) and write it, with its recipe, to ``path``."""
    import time

    from fasthpt import __version__
    from fasthpt.experiment import assets
    from fasthpt.experiment.preset import to_yaml
    from fasthpt.experiment.run import machine
    from fasthpt.fileio import git_sha

    exp.cfg.base.checkpoint = ""
    t0 = time.time()
    backbone = exp.build_base()
    recipe = {"preset": exp.cfg.name, "arch": exp.cfg.base.pretrain.arch, "chain": exp.base_result["stages"],
              "recipe": to_yaml(exp.cfg.base), "built_s": time.time() - t0,
              "machine": machine(reference), "git_sha": git_sha(), "fasthpt": __version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = assets.write(backbone, path, recipe)
    print(f"base written: {out} (+ {out.with_suffix('.json').name}); {recipe['built_s'] / 60:.1f} min")
    return 0
