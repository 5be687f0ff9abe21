"""Speed-up algorithms selectable by name in ``train.algorithms`` (Composer's Algorithm contract).

Composer's own ProgressiveResizing resizes ``batch[0]`` only and treats ``batch[1]`` as a target
(left alone unless ``resize_targets``, which would crop it *differently*); a MoCo batch is two
views of equal standing, so TwoViewProgressiveResizing scales both to the same size each step.
Microbatching is deliberately not offered: splitting a batch changes the set of in-batch keys and
the shuffle-BN statistics, i.e. the contrastive task itself.
"""

from __future__ import annotations

import torch
from composer.algorithms import ChannelsLast, LayerFreezing
from composer.algorithms.progressive_resizing import resize_batch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from fasthpt.errors import UserError


def scale_at(progress: float, initial_scale: float, delay: float, finetune: float) -> float:
    """Composer's schedule: ``initial_scale`` until ``delay``, linear to 1 at ``1 - finetune``, then 1."""
    if progress < delay:
        return initial_scale
    ramp = min(1.0, (progress - delay) / max(1e-12, 1.0 - finetune - delay))
    return initial_scale + (1.0 - initial_scale) * ramp


def resize_views(views: tuple[torch.Tensor, ...], scale: float, increment: int = 4,
                 mode: str = "resize") -> tuple[torch.Tensor, ...]:
    """Scale every view (N x C x H x W) by ``scale``, width pinned to a multiple of ``increment``."""
    width = views[0].shape[3]
    pinned = max(increment, round(width * scale / increment) * increment) / width
    if pinned >= 1.0:
        return tuple(views)
    out = []
    for v in views:
        resized, _ = resize_batch(v, v, scale_factor=pinned, mode=mode, resize_targets=False)
        if v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous():
            resized = resized.contiguous(memory_format=torch.channels_last)  # keep the loader's layout
        out.append(resized)
    return tuple(out)


class TwoViewProgressiveResizing(Algorithm):
    """Progressive resizing of both MoCo views (defaults: Composer's ProgressiveResizing)."""

    def __init__(self, initial_scale: float = 0.5, delay_fraction: float = 0.5, finetune_fraction: float = 0.2,
                 size_increment: int = 4, mode: str = "resize"):
        if not 0 < initial_scale <= 1 or delay_fraction + finetune_fraction > 1:
            raise UserError("progressive_resizing: need 0 < initial_scale <= 1 and delay + finetune <= 1")
        self.initial_scale, self.delay, self.finetune = initial_scale, delay_fraction, finetune_fraction
        self.increment, self.mode = size_increment, mode

    def match(self, event: Event, state: State) -> bool:
        return event == Event.AFTER_DATALOADER

    def apply(self, event: Event, state: State, logger: Logger | None = None) -> None:
        progress = float(state.get_elapsed_duration() or 0.0)
        scale = scale_at(progress, self.initial_scale, self.delay, self.finetune)
        views = resize_views(tuple(state.batch[:2]), scale, self.increment, self.mode)
        state.batch = views + tuple(state.batch[2:])
        if logger is not None:
            logger.log_metrics({"progressive_resizing/width": views[0].shape[3]})


def apply_blurpool_moco(moco) -> None:
    """BlurPool (Zhang 2019) on both encoders, before the optimizer exists: Composer's BlurPool
    algorithm does its surgery at INIT and then insists that every replaced parameter is in the
    optimizer, which the key encoder's (momentum-updated, never optimized) are not. The same
    surgery on both keeps their parameter lists aligned for the momentum update."""
    from composer.algorithms.blurpool import apply_blurpool

    apply_blurpool(moco.encoder_q)
    apply_blurpool(moco.encoder_k)


class QueryLayerFreezing(LayerFreezing):
    """Composer's LayerFreezing schedule (FreezeOut-like: the earliest layers first, linearly up to
    ``freeze_level`` at the end) applied to the query encoder only. Composer's own walks *all*
    modules in order and spares only the very last one, which in a MoCo model is the key
    encoder's; with freeze_level 1 it would freeze the whole query encoder, head included, and
    the loss would lose its gradient."""

    def __init__(self, encoder, freeze_start: float = 0.5, freeze_level: float = 1.0):
        super().__init__(freeze_start=freeze_start, freeze_level=freeze_level)
        self.encoder = encoder

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        from composer.algorithms.layer_freezing import freeze_layers

        depth, fraction = freeze_layers(model=self.encoder, optimizers=state.optimizers,
                                        current_duration=float(state.get_elapsed_duration()),
                                        freeze_start=self.freeze_start, freeze_level=self.freeze_level)
        for opt in state.optimizers:  # Composer leaves frozen params' momentum in the optimizer
            live = {id(p) for group in opt.param_groups for p in group["params"]}  # state, and
            for p in [p for p in opt.state if id(p) not in live]:  # state_dict() (checkpoints)
                del opt.state[p]  # then raises KeyError on them
        logger.log_metrics({"layer_freezing/layers_frozen": depth, "layer_freezing/percentage_frozen": fraction})


# name -> Trainer algorithm factory, or None for model surgery done before the optimizer exists
# (MODEL_SURGERY). The names are what configs list in train.algorithms.
ALGORITHMS = {
    "channels_last": ChannelsLast,
    "blurpool": None,  # adds blur filters: exported backbone.pt keeps the convs, not the blur
    "progressive_resizing": TwoViewProgressiveResizing,
    # Composer warns that runs with layer freezing cannot resume reliably from a checkpoint.
    "layer_freezing": lambda moco: QueryLayerFreezing(moco.encoder_q),
}
MODEL_SURGERY = {"blurpool": apply_blurpool_moco}


_NEEDS_MODEL = {"layer_freezing"}


def build_algorithms(names: list[str], moco=None) -> list[Algorithm]:
    """Trainer algorithms for ``names`` (model-surgery names are applied by ``prepare_model``)."""
    bad = [n for n in names if n not in ALGORITHMS]
    if bad:
        raise UserError(f"unknown algorithm {bad[0]!r} in train.algorithms; valid: {', '.join(ALGORITHMS)}")
    if moco is None and _NEEDS_MODEL & set(names):
        raise ValueError("build_algorithms: layer_freezing needs the MoCo module")
    return [ALGORITHMS[n](moco) if n in _NEEDS_MODEL else ALGORITHMS[n]()
            for n in names if ALGORITHMS[n] is not None]


def prepare_model(moco, names: list[str]) -> None:
    for name in names:
        if name in MODEL_SURGERY:
            MODEL_SURGERY[name](moco)
