"""HPT specifics: what trains (full / HPT-BN / frozen stages) and the base -> source -> target chain.

HPT-BN follows the authors' OpenSelfSup configs (cjrd/self-supervised-pretraining,
``*bn-iters.py``: ``frozen_stages=4, norm_train=True``): every conv weight frozen, every BatchNorm
layer in train mode (running statistics update) with its affine parameters trainable, and the
projection head trainable. ``freeze_stages=k`` freezes the stem and the first k ResNet stages
entirely (parameters and BN statistics), as OpenSelfSup's ``frozen_stages``.

A backbone whose conv1 does not take 3 channels (N-band data: conv1 adapted from an RGB base by
fasthpt.models.backbones.adapt_conv1, or new) keeps conv1 trainable under HPT-BN: filters made up
for bands the base never saw must learn them, and a frozen made-up stem would bound what BN can fix.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from torch import nn

from fasthpt.config import RunConfig
from fasthpt.errors import UserError
from fasthpt.manifest import load_manifest
from fasthpt.models.moco import MoCo

log = logging.getLogger(__name__)
MODES = ("full", "bn")
_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def apply_mode(moco: MoCo, mode: str = "full", freeze_stages: int = 0) -> dict[str, int]:
    """Set ``requires_grad`` on the query encoder for ``mode``; returns counts of trainable and
    frozen parameter tensors and whether conv1 trains (the key encoder never trains: it follows by
    momentum)."""
    if mode not in MODES:
        raise UserError(f"hpt.mode {mode!r}; valid: {', '.join(MODES)}")
    if not 0 <= freeze_stages <= 4:
        raise UserError(f"hpt.freeze_stages must be in 0..4, got {freeze_stages}")
    backbone = moco.backbone
    for p in moco.encoder_q.parameters():
        p.requires_grad = True
    if mode == "bn":
        for m in backbone.modules():
            if not isinstance(m, _NORMS):
                for p in m.parameters(recurse=False):
                    p.requires_grad = False
        bands = _stem_bands(backbone)
        if bands != 3:
            for p in backbone.conv1.parameters():
                p.requires_grad = True
            log.info("hpt mode bn: conv1 (%d input bands, adapted or new) stays trainable with the norms and head",
                     bands)
    frozen = ["conv1", "bn1"] + [f"layer{i}" for i in range(1, freeze_stages + 1)] if freeze_stages else []
    moco.frozen_norms = []
    for name in frozen:
        module = getattr(backbone, name)
        for p in module.parameters():
            p.requires_grad = False
        moco.frozen_norms += [f"backbone.{name}.{n}".rstrip(".") for n, m in module.named_modules()
                              if isinstance(m, _NORMS)]
    if freeze_stages and _stem_bands(backbone) != 3:
        log.warning("hpt.freeze_stages=%d freezes conv1 too, which takes %d bands (adapted from the base, or new)",
                    freeze_stages, _stem_bands(backbone))
    moco.train(moco.training)
    params = list(moco.encoder_q.parameters())
    return {"trainable": sum(p.requires_grad for p in params), "frozen": sum(not p.requires_grad for p in params),
            "conv1_trainable": int(all(p.requires_grad for p in backbone.conv1.parameters()))}


def _stem_bands(backbone: nn.Module) -> int:
    """conv1's input channels (its 4-d weight; a speed-up may have wrapped the conv)."""
    return next(p.shape[1] for p in backbone.conv1.parameters() if p.ndim == 4)


def stage_configs(cfg: RunConfig) -> list[RunConfig]:
    """One RunConfig per stage; stage i's base is stage i-1's backbone.pt (the first one's is
    ``cfg.hpt.base``); runs land in runs/<name>/<stage.name>/. No stages: [cfg]. Stage names are
    unique folder names (checked by fasthpt.config.validate)."""
    if not cfg.stages:
        return [cfg]
    out, base = [], cfg.hpt.base
    for stage in cfg.stages:
        sub = copy.deepcopy(cfg)
        sub.stages = []
        sub.run_dir = str(Path(cfg.run_dir) / cfg.name)
        sub.name = stage.name
        sub.data.path = stage.data
        sub.train.max_duration = stage.max_duration
        sub.hpt.mode = stage.mode
        sub.hpt.base = base
        out.append(sub)
        base = str(sub.run_path / "backbone.pt")
    return out


def check_stage_data(stages: list[RunConfig], world_size: int) -> None:
    """Every stage's data, checked before the first stage trains (a chain that trains for hours
    must not stop at stage 2 for a folder it could have looked at first): it is a prepared folder,
    holds the splits the stage reads, a loader backend here can read it, and it has at least one
    batch per process. One line naming the stage."""
    from fasthpt.data import resolve_backend

    for cfg in stages:
        d = cfg.data
        try:
            manifest = load_manifest(d.path)
            images = sum(manifest.count(split) for split in d.ssl_splits.split("+"))
            if cfg.durations.knn_interval:
                manifest.count("val")  # the kNN monitor's query split
            backend = resolve_backend(d.backend, manifest)
            (manifest.ffcv_path if backend == "ffcv" else manifest.wds_shards)("train")  # its files are there
        except UserError as exc:
            raise UserError(f"stage {cfg.name!r}: {exc}") from None
        if images < d.batch_size * world_size:
            raise UserError(f"stage {cfg.name!r}: {d.path} holds {images} {d.ssl_splits} images, fewer than one "
                            f"batch of data.batch_size {d.batch_size} x {world_size} process(es)")
