"""Stratified train/val/test assignment that works on a stream of labelled samples.

Samples arrive in an order shuffled by --seed. Within each class, after its k-th usable sample the
class holds exactly V(k) = round(k * val_frac) val and T(k) = round(k * test_frac) test samples
(round half up), so every class ends with round(n_c * val_frac) val and round(n_c * test_frac) test
samples, counted over the images that were actually usable (skipped files do not unbalance it), and
the label need not be known before an image is decoded (generators produce it on render).

The k-th sample goes to val when V grows, else to test when T grows, else to train: val is the
same set as a two-way split with the same seed. When V and T grow at the same k (with 0.2 / 0.2:
k = 3, 8, 13, ...) one sample cannot fill both, so the class's latest train sample is kept back,
unwritten, and moves to test then. One kept-back sample per class always suffices when
val_frac + test_frac < 1: as |V(k) - k*val_frac| <= 1/2 (likewise T), V and T together grow by less
than L*(val_frac + test_frac) + 2 over any L consecutive samples (at most L*(...) + 1 from the
first), so any stretch that holds two double steps (or the first sample and one) holds a sample
that grows neither: a train sample.
"""

from __future__ import annotations

import math

import numpy as np

HELD_OUT = ("val", "test")


def shuffled_order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def _rounded(x: float) -> int:
    # Round half up (not Python's banker's rounding) so the result does not depend on parity.
    return math.floor(x + 0.5)


class StreamingSplit:
    """assign() routes each sample as it comes; flush() releases the kept-back train samples."""

    def __init__(self, val_frac: float, test_frac: float, num_classes: int):
        self.fracs = (val_frac, test_frac)
        self.seen = [0] * num_classes
        self.held = [[0, 0] for _ in range(num_classes)]  # val, test so far, per class
        # Only both fractions can grow at once; otherwise train samples are final at once.
        self.keep_back = val_frac > 0 and test_frac > 0
        self.pending: list = [None] * num_classes

    def assign(self, key: str, label: int, item) -> list[tuple[str, object]]:
        """(split, item) pairs that are final now, given the next sample of class `label`. `key`
        (the source path) is unused here: the interface is shared with a fixed, listed split."""
        self.seen[label] += 1
        held = self.held[label]
        due = [s for s in range(2) if _rounded(self.seen[label] * self.fracs[s]) > held[s]]
        for s in due:
            held[s] += 1
        if not due:
            return self._train(label, item)
        out = [(HELD_OUT[due[0]], item)]
        if len(due) == 2:
            assert self.pending[label] is not None, "one kept-back sample suffices (module docstring)"
            out.append((HELD_OUT[due[1]], self.pending[label]))
            self.pending[label] = None
        return out

    def _train(self, label: int, item) -> list[tuple[str, object]]:
        if not self.keep_back:
            return [("train", item)]
        previous, self.pending[label] = self.pending[label], item
        return [] if previous is None else [("train", previous)]

    def flush(self) -> list[tuple[str, object]]:
        out = [("train", item) for item in self.pending if item is not None]
        self.pending = [None] * len(self.pending)
        return out


class ListedSplit:
    """The split of each listed source path, from the user's lists (same interface as StreamingSplit)."""

    def __init__(self, split_of: dict[str, str]):
        self.split_of = split_of

    def assign(self, key: str, label: int, item) -> list[tuple[str, object]]:
        return [(self.split_of[key], item)]

    def flush(self) -> list[tuple[str, object]]:
        return []
