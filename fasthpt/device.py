"""Where work runs, decided in one place: the torch device of loaders, evaluation and benchmarks,
Composer's device name for a training run, and the run's precision.

"auto" (or None) means the same everywhere: CUDA when this machine has it, else the CPU.
"""

from __future__ import annotations

import torch

from fasthpt.errors import UserError

AUTO = "auto"


def resolve_device(device: torch.device | str | None = AUTO) -> torch.device:
    """None or "auto": CUDA when available, else the CPU; anything else as ``torch.device`` reads it."""
    if device is None or str(device) == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def available_device(device: torch.device | str | None = AUTO) -> torch.device:
    """``resolve_device``, refusing a CUDA device on a machine without CUDA (a ``--device`` the
    user named, before any model or data is loaded)."""
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return dev


def trainer_device() -> str:
    """Composer's name for this machine's device (``Trainer(device=...)``): "gpu" or "cpu"."""
    return "gpu" if resolve_device().type == "cuda" else "cpu"


def rank_device(trainer_device: str, local_rank: int) -> torch.device:
    """The torch device one training process fills its batches on: its own GPU, else the CPU."""
    return torch.device("cuda", local_rank) if trainer_device == "gpu" else torch.device("cpu")


def resolve_precision(precision: str, trainer_device: str) -> str:
    """auto: amp_bf16 on a GPU, fp32 on the CPU (Composer's CPU device runs fp32 only)."""
    if precision == AUTO:
        return "amp_bf16" if trainer_device == "gpu" else "fp32"
    if trainer_device == "cpu" and precision != "fp32":
        raise UserError(f"train.precision={precision} needs a GPU; use fp32 or auto on the CPU")
    return precision


def accelerator_name() -> str | None:
    """The CUDA device's name for benchmark and report records; None on a machine without one."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None
