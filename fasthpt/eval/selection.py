"""Which point of a training curve is reported: select on val, report test.

The rule of the authors' utils/agg-results.sh (cjrd/self-supervised-pretraining): of the n
validation evaluations (index ct = 0 .. n-1, in training order), only those with
ct > round(n * 0.5) are candidates; the first candidate with the highest val accuracy wins (a later
one must be strictly higher); the reported number is the test accuracy at that index.

Two details of the script, made explicit here:
- ``round`` is printf's "%0.0f", which rounds halves to even, as Python's ``round`` does.
- the script compares ``ct > afterlen`` with bash's ``[[ > ]]``, which compares strings; the
  numeric comparison is the evident intent and is what is done here. It also starts from a best
  val of 0 and so reports nothing when every candidate scores 0; here the first candidate wins.
With fewer than 4 evaluations no index passes ct > round(n * 0.5); the last evaluation is then
reported (the final model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def candidates(n: int) -> range:
    """The indices a curve of ``n`` evaluations selects among: ct > round(n * 0.5), or the last
    evaluation alone when no index passes (module doc)."""
    first = round(n * 0.5) + 1
    return range(first, n) if first < n else range(max(n - 1, 0), n)


def select_index(val: Sequence[float]) -> int:
    """The index of the reported point of a val curve (module doc)."""
    n = len(val)
    if n == 0:
        raise ValueError("no evaluations to select from")
    window = candidates(n)
    best = window[0]
    for ct in window[1:]:
        if val[ct] > val[best]:
            best = ct
    return best


@dataclass
class Curves:
    """Val and test accuracy at each evaluated iteration."""

    iters: list = field(default_factory=list)
    val: list = field(default_factory=list)
    test: list = field(default_factory=list)

    def add(self, it: int, val_top1: float, test_top1: float) -> None:
        self.iters.append(int(it))
        self.val.append(float(val_top1))
        self.test.append(float(test_top1))

    def report(self) -> dict:
        """The result fields: ``top1`` (test at the selected point), ``val_top1``, ``best_iter``,
        the final point's test and val, and both curves."""
        i = select_index(self.val)
        return {
            "top1": self.test[i], "val_top1": self.val[i], "best_iter": self.iters[i],
            "final_test_top1": self.test[-1], "final_val_top1": self.val[-1],
            "selection": "test at the best val among evaluations ct > round(n/2) (agg-results.sh)",
            "curves": {"iter": list(self.iters), "val_top1": list(self.val), "test_top1": list(self.test)},
        }
