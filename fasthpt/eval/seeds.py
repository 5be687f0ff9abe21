"""A protocol repeated with N seeds (seed, seed + 1, ...): one result line per seed, then one summary
line with the mean, the sample standard deviation and a Student-t 95% interval of ``top1``
(fasthpt.stats)."""

from __future__ import annotations

from collections.abc import Callable

from fasthpt import stats
from fasthpt.errors import UserError
from fasthpt.fileio import append_jsonl, run_metadata

# What identifies a series: every seed's result shares these (a summary never mixes runs).
_SHARED = ("protocol", "mode", "protocol_version", "settings", "at_paper_settings", "settings_vs_paper", "backbone",
           "backbone_fingerprint", "arch", "dataset", "dataset_fingerprint")


def run_seeds(run: Callable[..., dict], backbone, data, *, seed: int = 0, seeds: int = 1, json_path=None,
              quiet: bool = False, **options) -> tuple[list[dict], dict | None]:
    """``run(backbone, data, seed=s, ...)`` for s = seed .. seed + seeds - 1. Returns (the results,
    the summary: None for one seed). The up-front time estimate of the first run covers them all."""
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    results = []
    for i in range(seeds):
        results.append(run(backbone, data, seed=seed + i, json_path=json_path, quiet=quiet,
                           estimate_runs=seeds if i == 0 else 0, **options))
    if seeds == 1:
        return results, None
    out = summarize(results)
    if not quiet:
        ci = out["ci95"]
        print(f"{out['mode']}: {seeds} seeds: top1 mean={out['mean']:.4f} std={out['std']:.4f} "
              f"95% CI [{ci[0]:.4f}, {ci[1]:.4f}] (Student t)", flush=True)
    if json_path:
        append_jsonl(json_path, {**out, **run_metadata()})
    return results, out


def summarize(results: list[dict]) -> dict:
    """The summary record of a series of results (one per seed) of ``top1``."""
    first = results[0]
    return {"summary": True, **{k: first.get(k) for k in _SHARED}, "metric": "top1",
            "seeds": [r["options"]["seed"] for r in results],
            **stats.summarize([r["top1"] for r in results]),
            "val_top1_mean": stats.mean([r["val_top1"] for r in results])}
