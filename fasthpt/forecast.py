"""A CPU user learns the cost first: a long run's time, estimated from a few timed steps and said
once ("note: ..." on stderr), with the faster alternative, before the rest of the run goes on.

The steps timed are the run's own first steps (``tick`` / ``iterate``): nothing extra runs and
nothing about the run changes (a training step cannot be tried out without changing the model).
The first ``warmup`` steps are not timed (loader start, first allocations, lazy initialisation);
the next ``timed`` steps are, or fewer once they add up to ``enough_s`` seconds (a slow step
needs no company to be measured). The run's cost is its work (``units``: batches, image passes,
samples) times the seconds per unit so measured. A rate measured elsewhere (the demo times a few
synthetic steps before it starts) is given to ``settle`` instead. Only a cost above ``LONG_S`` is
said; the caller decides where a forecast is worth making (fasthpt makes them on the CPU).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

LONG_S = 600.0  # a run longer than 10 minutes is announced


def now() -> float:
    """The clock forecasts read (tests replace it with a fake one)."""
    return time.perf_counter()


def human(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def say_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


@dataclass
class Forecast:
    """The forecast of one run: ``what`` ("this linear probe"), its work: ``units`` ``unit`` (a
    plural: "image passes", "batches"), the faster alternative ``hint`` (``{fast}`` in it is replaced by the time of
    ``fast_units``), ``runs`` such runs to come (seeds). ``message`` holds what was said."""

    what: str
    units: float
    unit: str
    hint: str
    fast_units: float | None = None
    runs: int = 1
    warmup: int = 1
    timed: int = 3
    enough_s: float = 10.0
    where: str = "on this CPU"
    say: Callable[[str], object] | None = None  # None: say_note (a "note:" line on stderr)
    message: str | None = None
    _steps: int = field(default=0, repr=False)
    _start: float = field(default=0.0, repr=False)
    _timed_units: float = field(default=0.0, repr=False)
    _done: bool = field(default=False, repr=False)

    def tick(self, units: float = 1.0) -> None:
        """One step of the run done, ``units`` of work; after the timed steps, ``settle``."""
        if self._done:
            return
        self._steps += 1
        if self._steps <= self.warmup:
            self._start = now()
            return
        self._timed_units += units
        elapsed = now() - self._start
        if self._timed_units > 0 and (self._steps >= self.warmup + self.timed or elapsed >= self.enough_s):
            timed = self._steps - self.warmup
            self.settle(elapsed / self._timed_units, f"from {timed} timed step{'s' * (timed > 1)} after a warm-up one")

    def iterate(self, items: Iterable, units: Callable[[object], float] = lambda item: 1.0) -> Iterator:
        """``items``, each counted as a step of ``units(item)`` once the loop body has run on it."""
        for item in items:
            yield item
            self.tick(units(item))

    def settle(self, seconds_per_unit: float, how: str) -> str | None:
        """Say the run's cost at ``seconds_per_unit`` (``how``: where that figure comes from) when it
        is long; once per forecast. Returns the message, or None."""
        self._done = True
        total = self.units * seconds_per_unit * self.runs
        if total <= LONG_S:
            return None
        hint = self.hint
        if self.fast_units is not None:
            hint = hint.format(fast=human(self.fast_units * seconds_per_unit * self.runs))
        each = f" ({self.runs} runs)" if self.runs > 1 else ""
        self.message = (f"{self.what} will take about {human(total)} {self.where}{each}: {self.units:,.0f} "
                        f"{self.unit} at {_per(seconds_per_unit)} each ({how}); faster: {hint}")
        (self.say or say_note)(self.message)
        return self.message


def _per(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
