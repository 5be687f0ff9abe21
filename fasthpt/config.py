"""Typed, strict run configuration: YAML file + ``key=value`` overrides -> ``RunConfig``.

An unknown key or a value of the wrong type is a ``UserError`` naming the key and the valid keys,
raised before any work starts (OmegaConf structured configs in struct mode).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError

BACKENDS = ("auto", "ffcv", "dali", "torch")
# Checked here, before any heavy import; fasthpt.models.backbones.ARCHS and
# fasthpt.algorithms.ALGORITHMS hold the implementations (a test keeps the names in step).
ARCH_NAMES = ("resnet_tiny", "resnet18", "resnet50")
ALGORITHM_NAMES = ("channels_last", "blurpool", "progressive_resizing", "layer_freezing")
_BATCHES = re.compile(r"^\d+ba$")


@dataclass
class DataConfig:
    path: str = "data/sat"  # a folder written by `fasthpt prep` (holds manifest.json)
    backend: str = "auto"  # auto | ffcv | dali | torch
    res: int = 64  # side of each augmented view
    batch_size: int = 64  # per process
    workers: int = 2  # loader threads / processes
    channels_last: bool = False
    aug: AugPolicy = field(default_factory=AugPolicy)


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # resnet_tiny | resnet18 | resnet50
    dim: int = 128  # MoCo feature dim (HPT.md)
    mlp_hidden: int = 0  # 0: the backbone's feature width (2048 for ResNet-50, as in MoCo-v2)
    queue_size: int = 65536
    momentum: float = 0.999  # key-encoder EMA
    temperature: float = 0.2
    shuffle_bn: str = "shuffle"  # shuffle | sync | none (cross-process; no-op on one process)


@dataclass
class HPTConfig:
    base: str = "none"  # checkpoint path | torchvision:resnet50 | none (random init)
    mode: str = "full"  # full | bn (HPT-BN: convs frozen, BN + head train)
    freeze_stages: int = 0  # additionally freeze stem + the first k ResNet stages


@dataclass
class OptimConfig:
    lr: float = 0.03  # per 256 images; scaled linearly with the global batch
    momentum: float = 0.9
    weight_decay: float = 1e-4  # never on norm / bias parameters (chosen by ndim <= 1)
    warmup: str = "0ba"


@dataclass
class TrainConfig:
    max_duration: str = "5000ba"
    precision: str = "auto"  # auto: amp_bf16 on a GPU, fp32 on the CPU
    algorithms: List[str] = field(default_factory=list)
    seed: int = 17
    save_interval: str = "1000ba"
    save_num_checkpoints_to_keep: int = 2
    autoresume: bool = True
    log_interval: str = "10ba"
    knn_interval: str = "0ba"  # 0ba: kNN monitor off
    knn_k: int = 20
    knn_t: float = 0.07
    progress_bar: bool = True
    console_log: bool = True  # Composer's per-interval console lines (only when progress_bar is off)
    tensorboard: bool = False


@dataclass
class StageConfig:
    """One link of a base -> source -> target chain; the previous stage's backbone.pt is its base."""

    name: str = "stage"
    data: str = "data/sat"
    max_duration: str = "5000ba"
    mode: str = "full"


@dataclass
class RunConfig:
    name: str = "hpt"
    run_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    hpt: HPTConfig = field(default_factory=HPTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: List[StageConfig] = field(default_factory=list)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) / self.name


def _explain(exc: OmegaConfBaseException) -> UserError:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0]
    if "not in struct" in msg or ("Key '" in msg and "not" in msg):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.structured(RunConfig)
        node = OmegaConf.select(node, parent) if parent else node
        valid = ", ".join(node.keys()) if hasattr(node, "keys") else "(none)"
        return UserError(f"unknown config key {key!r}; valid keys here: {valid}")
    return UserError(f"bad value for config key {key!r}: {msg}")


def validate(cfg: RunConfig) -> RunConfig:
    choices = {
        "data.backend": (cfg.data.backend, BACKENDS),
        "model.shuffle_bn": (cfg.model.shuffle_bn, ("shuffle", "sync", "none")),
        "hpt.mode": (cfg.hpt.mode, ("full", "bn")),
        "train.precision": (cfg.train.precision, ("auto", "fp32", "amp_bf16", "amp_fp16")),
    }
    for stage in cfg.stages:
        choices[f"stages.{stage.name}.mode"] = (stage.mode, ("full", "bn"))
    choices["model.arch"] = (cfg.model.arch, ARCH_NAMES)
    for i, name in enumerate(cfg.train.algorithms):
        choices[f"train.algorithms[{i}]"] = (name, ALGORITHM_NAMES)
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise UserError(f"config key {key!r} is {value!r}; valid: {', '.join(valid)}")
    durations = {"train.max_duration": cfg.train.max_duration, "train.save_interval": cfg.train.save_interval,
                 "train.log_interval": cfg.train.log_interval, "train.knn_interval": cfg.train.knn_interval,
                 "optim.warmup": cfg.optim.warmup}
    durations.update({f"stages.{s.name}.max_duration": s.max_duration for s in cfg.stages})
    for key, value in durations.items():
        if not _BATCHES.match(str(value)):
            raise UserError(f"config key {key!r} is {value!r}; give a number of batches, e.g. '5000ba'")
    if not 0 <= cfg.hpt.freeze_stages <= 4:
        raise UserError(f"config key 'hpt.freeze_stages' must be in 0..4, got {cfg.hpt.freeze_stages}")
    for key, value in (("data.res", cfg.data.res), ("data.batch_size", cfg.data.batch_size)):
        if value <= 0:
            raise UserError(f"config key {key!r} must be positive, got {value}")
    cfg.data.aug.validate()
    return cfg


def load_config(path: str | Path | None = None, overrides: Optional[list[str]] = None) -> RunConfig:
    """Load ``path`` (YAML) over the typed defaults, apply ``key=value`` overrides, validate."""
    schema = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(schema, True)
    try:
        merged = schema
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise UserError(f"config file not found: {path}")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise UserError(f"overrides must be key=value, got {bad[0]!r}")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _explain(exc) from None
    return validate(cfg)


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config atomically (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)
