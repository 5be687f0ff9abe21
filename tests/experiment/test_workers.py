"""Runs trained by worker processes kept for a whole experiment (fasthpt.experiment.runs.Workers):
the same processes train every budget, so each pays its start once."""

import pytest

import dataprep
from fasthpt.experiment.preset import load_preset, preset_path
from fasthpt.experiment.runs import Job, Workers, run_all


@pytest.mark.slow
def test_the_same_processes_train_every_budget(tmp_path):
    data = dataprep.prepare("sat", out=tmp_path / "data", num_images=64, image_size=32, progress=False)
    cfg = load_preset(preset_path("tiny"))  # torch loader, resnet_micro, batch 16
    seen = []
    with Workers(2) as workers:
        for iters in (1, 2):  # two budgets, two seeds each: two calls, as the scratch grid makes them
            results = run_all([Job("scratch", iters, s, str(data)) for s in (0, 1)], cfg, tmp_path / "runs", workers)
            assert [r["iterations"] for r in results] == [iters, iters]
            seen.append(set(workers._pool._processes))  # the executor's worker pids
    assert len(seen[0]) == 2 and seen[0] == seen[1]
    assert workers._pool is None  # shut down with the experiment
