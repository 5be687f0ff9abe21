"""Stratified train/val assignment that works on a stream of labelled samples.

Samples arrive in an order shuffled by --seed. Within each class, the k-th usable sample goes to
val exactly when round(k * val_frac) grows, so every class ends with round(n_c * val_frac) val
samples, counted over the images that were actually usable (skipped files do not unbalance it),
and the label need not be known before an image is decoded (generators produce it on render).
"""

from __future__ import annotations

import math

import numpy as np


def shuffled_order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


class StreamingSplit:
    def __init__(self, val_frac: float, num_classes: int):
        self.val_frac = val_frac
        self.seen = [0] * num_classes
        self.val = [0] * num_classes

    def assign(self, label: int) -> str:
        """'train' or 'val' for the next sample of class `label`."""
        self.seen[label] += 1
        # Round half up (not Python's banker's rounding) so the result does not depend on parity.
        target = math.floor(self.seen[label] * self.val_frac + 0.5)
        if target > self.val[label]:
            self.val[label] += 1
            return "val"
        return "train"
