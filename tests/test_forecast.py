"""fasthpt.forecast: a long run's cost from its first timed steps, said once, with a fake clock."""

import pytest

from fasthpt import forecast
from fasthpt.forecast import Forecast, human


@pytest.fixture
def clock(monkeypatch):
    """A clock the test moves: ``clock.t`` is what the next reading returns."""

    class Clock:
        t = 0.0

    monkeypatch.setattr(forecast, "now", lambda: Clock.t)
    return Clock


def _steps(fc, clock, seconds, units=1.0):
    for s in seconds:
        clock.t += s
        fc.tick(units)


def test_the_warm_up_step_is_not_timed_and_three_steps_are(clock):
    said = []
    fc = Forecast("this run", 1000, "batches", "fewer batches", say=said.append)
    _steps(fc, clock, [50.0, 2.0, 2.0])  # a slow first step (start-up), then 2 s steps
    assert said == []  # two timed steps, 4 s: not yet enough
    _steps(fc, clock, [2.0])
    assert said == ["this run will take about 33 min on this CPU: 1,000 batches at 2.00 s each (from 3 timed steps "
                    "after a warm-up one); faster: fewer batches"]
    _steps(fc, clock, [2.0] * 10)
    assert len(said) == 1 and fc.message == said[0]  # said once


def test_slow_steps_are_measured_sooner_and_short_runs_are_not_announced(clock):
    said = []
    fc = Forecast("this run", 100, "image passes", "hint", say=said.append)
    _steps(fc, clock, [1.0, 40.0], units=4)  # one timed step of 40 s (>= enough_s): 10 s per unit
    assert said and "about 17 min" in said[0] and "100 image passes at 10.00 s each (from 1 timed step" in said[0]
    quiet = []
    short = Forecast("this run", 100, "batches", "hint", say=quiet.append)
    _steps(short, clock, [1.0, 5.0, 5.0])  # 6 s per step... 100 steps = 600 s: not more than LONG_S
    assert short._done and quiet == []


def test_seeds_and_the_faster_alternative_are_priced(clock):
    said = []
    fc = Forecast("this probe", 7200, "image passes", "--precomputed (about {fast})", fast_units=600, runs=3,
                  say=said.append)
    assert fc.settle(1.0, "timed elsewhere") == said[0]
    assert said[0] == ("this probe will take about 6.0 h on this CPU (3 runs): 7,200 image passes at 1.00 s each "
                       "(timed elsewhere); faster: --precomputed (about 30 min)")


def test_iterate_counts_each_item_once_its_loop_body_has_run(clock):
    said = []
    fc = Forecast("this run", 10_000, "images", "hint", say=said.append)
    seen = []
    for _ in fc.iterate([[0] * 8] * 6, units=len):
        seen.append(len(said))
        clock.t += 2.0  # the loop body: 0.25 s per image
    assert seen == [0, 0, 0, 0, 1, 1]  # said after the warm-up batch and three timed ones
    assert "10,000 images at 250.0 ms each" in said[0]


def test_human():
    assert [human(s) for s in (30, 600, 7200)] == ["30 s", "10 min", "2.0 h"]
