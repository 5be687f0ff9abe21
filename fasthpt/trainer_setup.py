"""Assemble one run's Composer Trainer from a RunConfig: model (base import, HPT mode), loader,
optimizer, schedule, algorithms, callbacks and loggers. No training happens here.

The assembly flows one way: fasthpt.train (the run) calls this module, which reads the config
(durations as batch counts, ``RunConfig.durations``) and the device (``device`` is Composer's name
for it, fasthpt.device.trainer_device), and never calls back into the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from composer import Callback, Trainer
from composer.callbacks import SpeedMonitor
from composer.core import DataSpec, Time
from composer.optim import CosineAnnealingScheduler, CosineAnnealingWithWarmupScheduler
from composer.utils import dist, reproducibility
from torch import nn

from fasthpt.algorithms import build_algorithms, prepare_model
from fasthpt.callbacks import DataStall, JSONLLogger, KNNMonitor, NonFiniteGuard, PlateauRule, SetEpoch
from fasthpt.config import RunConfig, bn_groups
from fasthpt.data import build_eval_loader, build_ssl_loader, split_labels
from fasthpt.data.common import stratified_subset
from fasthpt.device import rank_device
from fasthpt.errors import UserError
from fasthpt.forecast import Forecast
from fasthpt.hpt import apply_mode
from fasthpt.manifest import load_manifest
from fasthpt.models.backbones import LoadReport, load_backbone, missing_tensors
from fasthpt.models.moco import ComposerMoCo, MoCo
from fasthpt.run_folder import checkpoints, on_rank_zero, resume_checkpoint

log = logging.getLogger("fasthpt.train")


class Loader(Protocol):
    """What a run needs of its SSL loader (every fasthpt.data backend's, and a benchmark's
    stand-in): batches of (view_q, view_k), batches and samples per epoch on this process, the
    backend's name, and a reshuffle per epoch."""

    backend: str
    num_samples: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...


@dataclass
class Parts:
    """What ``build_trainer`` assembled: the run fits ``trainer`` and reports from the rest."""

    trainer: Trainer
    moco: MoCo
    loader: Loader
    stall: DataStall
    report: LoadReport  # how the base checkpoint was read
    monitor: KNNMonitor | None = None  # the kNN monitor (and plateau rule), when train.knn_interval > 0


def build_model(cfg: RunConfig, device: str, bands: tuple[int, list | None] | None = None) -> tuple[MoCo, LoadReport]:
    """Backbone from the base, fresh MLP head, key encoder := query, random queue (as the authors'
    code after loading a base), then the HPT mode. Seeded so every rank builds the same model.
    The backbone takes the data's bands (the manifest's count and names; ``bands`` gives them for
    a stand-in loader's data)."""
    reproducibility.seed_all(cfg.train.seed)
    if bands is None:
        data = load_manifest(cfg.data.path)
        bands = data.bands, data.band_names
    backbone, report = load_backbone(cfg.hpt.base, cfg.model.arch, trust=cfg.hpt.trust_checkpoint,
                                     in_chans=bands[0], band_names=bands[1], conv1=cfg.hpt.conv1)
    if cfg.hpt.base not in ("none", "random", ""):  # HPT from a partial base would silently be partly scratch
        missing_tensors(backbone, report, cfg.hpt.base, cfg.hpt.allow_missing,
                        "give a complete base, or hpt.allow_missing=true to start them at random init")
    m = cfg.model
    world = dist.get_world_size()
    groups = bn_groups(cfg, world)
    moco = MoCo(backbone, dim=m.dim, mlp_hidden=m.mlp_hidden, queue_size=m.queue_size, momentum=m.momentum,
                temperature=m.temperature, shuffle_bn=m.shuffle_bn == "shuffle" and world > 1, bn_groups=groups)
    log.info("shuffle-BN: %s across %d process(es), %d BN group(s) of %d images per process", m.shuffle_bn,
             world, groups, cfg.data.batch_size // groups)
    if m.shuffle_bn == "sync" and world > 1:
        if device == "gpu":
            moco = nn.SyncBatchNorm.convert_sync_batchnorm(moco)
        else:
            log.warning("model.shuffle_bn=sync: SyncBatchNorm needs CUDA; using per-process BN on the CPU")
    prepare_model(moco, list(cfg.train.algorithms))  # surgery before apply_mode and the optimizer
    counts = apply_mode(moco, cfg.hpt.mode, cfg.hpt.freeze_stages)
    log.info("hpt mode %s, freeze_stages %d: %s", cfg.hpt.mode, cfg.hpt.freeze_stages, counts)
    return moco, report


def build_optimizer(moco: MoCo, cfg: RunConfig, global_batch: int) -> torch.optim.Optimizer:
    """SGD, lr = optim.lr * global_batch / 256 (linear scaling, MoCo: 0.03 at 256). Weight decay on
    every trainable parameter, BN weights and biases included, as MoCo's and the authors' SGD
    (OpenSelfSup builds one param group); ``optim.wd_norm_bias=false`` exempts those with
    ndim <= 1 (chosen by shape, never by name: FFCV's ``'bn' in name`` misses torchvision's
    ``downsample.1``)."""
    params = [p for p in moco.encoder_q.parameters() if p.requires_grad]
    wd = cfg.optim.weight_decay
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": wd},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": wd if cfg.optim.wd_norm_bias else 0.0}]
    lr = cfg.optim.lr * global_batch / 256
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=cfg.optim.momentum)


def build_scheduler(cfg: RunConfig) -> CosineAnnealingScheduler | CosineAnnealingWithWarmupScheduler:
    """Cosine to 0 over the run's max_duration (each stage its own schedule), optional warmup."""
    warmup = cfg.durations.warmup
    if warmup > 0:
        return CosineAnnealingWithWarmupScheduler(t_warmup=Time.from_batch(warmup), alpha_f=0.0)
    return CosineAnnealingScheduler(t_max="1dur", alpha_f=0.0)


def build_loader(cfg: RunConfig, device: str) -> Loader:
    d = cfg.data
    subset = None
    if d.train_fraction < 1:  # seed 0, not the run's: every run and seed sees the same images
        subset = stratified_subset(split_labels(d.path, "train"), d.train_fraction, seed=0)
        log.info("pretraining on %d train images (data.train_fraction=%g, stratified)", len(subset), d.train_fraction)
    return build_ssl_loader(
        d.path, split=d.ssl_splits, backend=d.backend, res=d.res, batch_size=d.batch_size, policy=d.aug,
        workers=d.workers, device=_torch_device(device), seed=cfg.train.seed, rank=dist.get_global_rank(),
        world_size=dist.get_world_size(), drop_last=True,
        # a channels_last model wants channels_last batches (else its first conv converts each one)
        channels_last=d.channels_last or "channels_last" in cfg.train.algorithms, indices=subset,
    )


def _torch_device(device: str) -> torch.device:
    return rank_device(device, dist.get_local_rank())


def knn_monitor(cfg: RunConfig, moco: MoCo, device: str) -> KNNMonitor | None:
    interval = cfg.durations.knn_interval
    if interval <= 0:
        return None
    d = cfg.data

    def loaders():
        kw = dict(backend=d.backend, res=d.res, batch_size=max(d.batch_size, 64), workers=d.workers,
                  device=_torch_device(device), rank=0, world_size=1)
        return build_eval_loader(d.path, split="train", **kw), build_eval_loader(d.path, split="val", **kw)

    classes = load_manifest(d.path).num_classes
    t = cfg.train
    if classes < 2:  # any accuracy on one class is 1.0: not a measurement
        if t.stop_on_plateau:
            raise UserError(f"train.stop_on_plateau needs the kNN monitor, and {d.path} has one class: its "
                            "accuracy would be 1.0 by construction")
        log.warning("kNN monitor off: %s has one class (any accuracy on it is 1.0)", d.path)
        return None
    rule = PlateauRule(t.plateau_patience, t.plateau_delta) if t.stop_on_plateau else None
    return KNNMonitor(moco, loaders, classes, interval, k=t.knn_k, t=t.knn_t, plateau=rule)


def resume_path(cfg: RunConfig, folder: Path) -> str | None:
    """The checkpoint to continue from when ``train.autoresume``: the newest one in the run's
    checkpoint folder that can be read (fasthpt.run_folder.resume_checkpoint), chosen on rank 0 and
    broadcast. (Composer's own ``autoresume`` does a similar lookup but its per-node signal file has
    one name on every node, so two nodes sharing a filesystem race to delete it:
    FileNotFoundError. Passing ``load_path`` avoids that dance.)"""

    def choose():
        if not cfg.train.autoresume:
            if checkpoints(folder):
                raise UserError(f"{folder} already holds checkpoints; set train.autoresume=true to continue "
                                f"that run, or choose another name=")
            return None
        path = resume_checkpoint(folder)
        return str(path.resolve()) if path else None

    found = [on_rank_zero(choose)]
    dist.broadcast_object_list(found, src=0)
    if found[0]:
        log.info("resuming from %s", found[0])
    return found[0]


class ForecastCost(Callback):
    """The run's cost on the CPU, said after its first timed batches (fasthpt.forecast), before the
    rest of it runs: a Forecast of the batches left, told of each batch end."""

    def __init__(self, cfg: RunConfig):
        self.cfg, self.forecast = cfg, None

    def fit_start(self, state, logger) -> None:
        left = self.cfg.durations.max_duration - int(state.timestamp.batch)
        knn = " (its kNN monitor not counted)" if self.cfg.durations.knn_interval else ""
        self.forecast = Forecast(f"this pretraining run{knn}", left, "batches",
                                 "fewer batches (train.max_duration; each budget is its own run), a smaller data.res, "
                                 "or a GPU")

    def batch_end(self, state, logger) -> None:
        if self.forecast is not None:
            self.forecast.tick()


def build_loggers(cfg: RunConfig, log_every: int) -> list:
    """metrics.jsonl always; TensorBoard when train.tensorboard (console: Composer's own)."""
    loggers = [JSONLLogger(cfg.run_path / "metrics.jsonl", interval=log_every)]
    if cfg.train.tensorboard:
        from composer.loggers import TensorboardLogger

        loggers.append(TensorboardLogger(log_dir=str(cfg.run_path / "tensorboard"), flush_interval=max(1, log_every)))
    return loggers


def build_trainer(cfg: RunConfig, device: str, precision: str, callbacks: tuple = (),
                  loader: Loader | None = None) -> Parts:
    """The run's Trainer and its parts; ``device`` and ``precision`` in Composer's names
    (fasthpt.device), ``loader`` in place of the one ``cfg.data`` describes (benchmarks)."""
    ckpt = cfg.run_path / "checkpoints"
    load_path = resume_path(cfg, ckpt)
    durations = cfg.durations
    log_every = durations.log_interval
    moco, report = build_model(cfg, device, None if loader is None else (3, None))  # stand-ins: RGB
    algorithms = build_algorithms(list(cfg.train.algorithms), moco)
    loader = build_loader(cfg, device) if loader is None else loader
    if len(loader) == 0:
        raise UserError(f"{cfg.data.path}: fewer training images per process than "
                        f"data.batch_size={cfg.data.batch_size}")
    model = ComposerMoCo(moco)
    spec = DataSpec(loader, num_samples=loader.num_samples, get_num_samples_in_batch=lambda b: int(b[0].shape[0]))
    stall = DataStall(window=log_every or 50)  # with logging off (0ba) only its whole-run figure is used
    positioner = SetEpoch(loader)
    callbacks = [*callbacks, positioner, stall, SpeedMonitor(window_size=20), NonFiniteGuard(ckpt)]
    monitor = knn_monitor(cfg, moco, device)
    if monitor is not None:
        callbacks.append(monitor)
    if device == "cpu" and dist.get_global_rank() == 0:
        callbacks.append(ForecastCost(cfg))
    loggers = build_loggers(cfg, log_every)
    global_batch = cfg.data.batch_size * dist.get_world_size()
    optimizer = build_optimizer(moco, cfg, global_batch)
    trainer = Trainer(
        model=model, train_dataloader=spec, max_duration=Time.from_batch(durations.max_duration),
        optimizers=optimizer, schedulers=build_scheduler(cfg), step_schedulers_every_batch=True, device=device,
        precision=precision, algorithms=algorithms, callbacks=callbacks, loggers=loggers, run_name=cfg.name,
        save_folder=str(ckpt), save_interval=Time.from_batch(durations.save_interval),
        save_overwrite=cfg.train.autoresume,
        save_num_checkpoints_to_keep=cfg.train.save_num_checkpoints_to_keep, load_path=load_path,
        seed=cfg.train.seed, progress_bar=cfg.train.progress_bar,
        log_to_console=cfg.train.console_log and not cfg.train.progress_bar and log_every > 0,  # 0ba: off
        console_log_interval=Time.from_batch(log_every), device_train_microbatch_size=cfg.data.batch_size,
        dist_timeout=1800.0,  # the kNN monitor runs on rank 0 while the others wait at the next all-reduce
        spin_dataloaders=False,  # SetEpoch positions our loaders at the resumed batch instead
    )
    positioner.trainer = trainer
    return Parts(trainer=trainer, moco=moco, loader=loader, stall=stall, report=report, monitor=monitor)
