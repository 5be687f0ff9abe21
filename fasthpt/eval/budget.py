"""Up-front time estimate of a protocol on a CPU: one "note:" line before a long run starts.

The cost is counted in image passes through the backbone (a feature extraction is one pass per
image; a training image of fine-tuning is three: the backward pass costs about twice the forward,
the usual 2:1 rule, e.g. Kaplan et al. 2020, "Scaling laws for neural language models", sec. 2.1),
and one pass is timed here on a small batch of random images at the protocol's resolution. Loading
and decoding are not counted, so the figure is a floor. On a GPU nothing is estimated.
"""

from __future__ import annotations

import time

import torch
from torch import nn

LONG_S = 600.0  # a run longer than 10 minutes is announced
TRAIN_PASSES = 3  # forward + backward of one training image, in forward passes (module doc)
_PROBE_BATCH = 4


def seconds_per_image(module: nn.Module, res: int, device: torch.device) -> float:
    """One forward pass per image, timed on ``_PROBE_BATCH`` random images after one warm-up pass.
    The module runs in eval mode under no_grad (its BatchNorm statistics are not touched)."""
    x = torch.randn(_PROBE_BATCH, 3, res, res, device=device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(x)
            start = time.perf_counter()
            module(x)
            return (time.perf_counter() - start) / _PROBE_BATCH
    finally:
        module.train(was_training)


def human(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def long_run_note(what: str, passes: int, per_image: float, hint: str, runs: int = 1) -> str | None:
    """The note for a run of ``passes`` image passes at ``per_image`` seconds each (``runs`` such runs:
    seeds), or None when it is short."""
    seconds = passes * per_image * runs
    if seconds <= LONG_S:
        return None
    each = f" ({runs} seeds)" if runs > 1 else ""
    return (f"this {what} will take about {human(seconds)} on this CPU{each}: {passes:,} image passes at "
            f"{per_image * 1000:.1f} ms each (timed here; loading not counted); {hint}")


def estimate(module: nn.Module, device: torch.device, res: int, what: str, passes: int, hint: str,
             runs: int = 1, fast_passes: int | None = None) -> str | None:
    """``long_run_note`` with the pass timed on ``module``; None on a GPU or when nothing is to be done.
    ``fast_passes``: the passes of the faster alternative the hint names, whose time fills ``{fast}``."""
    if device.type != "cpu" or passes <= 0 or runs <= 0:
        return None
    per_image = seconds_per_image(module, res, device)
    if fast_passes is not None:
        hint = hint.format(fast=human(fast_passes * per_image * runs))
    return long_run_note(what, passes, per_image, hint, runs)
