"""Convergence inside a run: the plateau rule on hand-made curves, a run that stops where the rule
fires (and stays stopped when relaunched), and two processes that stop after the same batch."""

import json

import pytest

from fasthpt.callbacks import PlateauRule
from fasthpt.config import load_config
from fasthpt.errors import UserError


def _fires_at(values, patience=3, delta=0.01):
    rule = PlateauRule(patience, delta)
    for step, value in enumerate(values, start=1):
        if rule.update(step * 100, value):
            return step * 100, rule
    return None, rule


def test_rising_curve_never_plateaus():
    at, rule = _fires_at([0.1 * i for i in range(1, 10)])
    assert at is None and rule.best_step == 900


def test_flat_curve_stops_after_patience_evaluations():
    at, rule = _fires_at([0.5, 0.6, 0.6, 0.6, 0.6, 0.9])
    assert at == 500 and (rule.best_step, rule.best) == (200, 0.6)  # the 0.9 after it is never seen


def test_noise_below_delta_is_not_progress():
    at, rule = _fires_at([0.50, 0.505, 0.498, 0.509, 0.503], delta=0.01)
    assert at == 400 and rule.best_step == 100


def test_rising_again_within_patience_resets_the_wait():
    curve = [0.4, 0.5, 0.5, 0.5, 0.6, 0.6, 0.6, 0.6]
    at, rule = _fires_at(curve, patience=3, delta=0.005)
    assert at == 800 and rule.best_step == 500  # the rise at 500 came before the wait ran out
    at, rule = _fires_at(curve, patience=2, delta=0.005)
    assert at == 400 and rule.best_step == 200  # a shorter patience takes the pause for the plateau


def test_plateau_needs_the_knn_monitor():
    with pytest.raises(UserError, match="train.knn_interval"):
        load_config(None, ["train.stop_on_plateau=true", "train.knn_interval=0ba"])
    with pytest.raises(UserError, match="plateau_patience"):
        load_config(None, ["train.plateau_patience=0"])


# delta 1.0: no kNN gain can exceed it, so the rule fires at the (patience + 1)-th evaluation
PLATEAU = ["train.stop_on_plateau=true", "train.knn_interval=2ba", "train.plateau_patience=1",
           "train.plateau_delta=1.0", "train.max_duration=12ba", "train.save_interval=12ba"]


def test_a_run_stops_at_its_plateau_and_stays_stopped(tiny_run):
    from fasthpt.train import pretrain

    cfg = tiny_run("plateau", *PLATEAU)
    first = pretrain(cfg)
    assert first["iterations"] == 4 and first["plateau"]["stopped"] and first["plateau"]["iteration"] == 4
    assert first["plateau"]["best_iteration"] == 2 and [h[0] for h in first["plateau"]["history"]] == [2, 4]
    saved = json.loads((cfg.run_path / "plateau.json").read_text())
    assert saved["iteration"] == 4 and (cfg.run_path / "backbone.pt").is_file()
    again = pretrain(cfg)  # relaunched: the checkpoint says the plateau was reached, nothing trains
    assert again["iterations"] == 4 and again["iterations_this_launch"] == 0 and again["plateau"]["stopped"]


@pytest.mark.slow
def test_two_processes_stop_after_the_same_batch(tmp_path, tiny_yaml):
    from test_train import _launch, _port, _summary

    cfg = tiny_yaml("ddp-plateau", *PLATEAU)
    proc = _launch(["-n", "2", "--master_port", str(_port())], cfg, tmp_path)
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    result = _summary(out)
    assert result["world_size"] == 2 and result["ranks_in_sync"] is True
    assert result["iterations"] == 4 and result["plateau"]["stopped"]
    assert json.loads((tmp_path / "ddp-plateau" / "plateau.json").read_text())["iteration"] == 4
