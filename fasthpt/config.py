"""Typed, strict run configuration: YAML file + ``key=value`` overrides -> ``RunConfig``.

An unknown key or a value of the wrong type is a ``UserError`` naming the key and the valid keys,
raised before any work starts (OmegaConf structured configs in struct mode).

Durations keep their YAML spelling in the config ('500ba': what users write and config.yaml
holds); ``_batches`` is their one parser, and the rest of fasthpt reads them as batch counts
through ``RunConfig.durations``.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fasthpt.data import BACKEND_CHOICES
from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError, clipped, shown
from fasthpt.fileio import atomic_write_text
from fasthpt.names import check_name

SSL_SPLITS = ("train", "train+val")
AUTHORS_BATCH_PER_DEVICE = 64  # imgs_per_gpu in the authors' configs: 4 GPUs x 64 = 256
# Checked here, before any heavy import; fasthpt.models.backbones.ARCHS and
# fasthpt.algorithms.ALGORITHMS hold the implementations (a test keeps the names in step).
ARCH_NAMES = ("resnet_tiny", "resnet_micro", "resnet18", "resnet50")
ALGORITHM_NAMES = ("channels_last", "blurpool", "progressive_resizing", "layer_freezing")
CONV1_STRATEGIES = ("auto", "rgb", "mean")  # fasthpt.models.backbones.CONV1_STRATEGIES (a test keeps them equal)
_BATCHES = re.compile(r"^\d+ba$")


@dataclass
class DataConfig:
    path: str = "data/sat"  # a folder written by `fasthpt prep` (holds manifest.json)
    backend: str = "auto"  # auto | ffcv | dali | torch
    res: int = 64  # side of each augmented view
    batch_size: int = 64  # per process (derived when global_batch is set)
    # The global batch, as the paper states it (256): > 0 derives the per-process batch from the
    # process count, global_batch / processes (per_process()), so one recipe trains alike on 1 GPU and
    # on `composer -n 4`; 0: data.batch_size is the per-process batch.
    global_batch: int = 0
    workers: int = 2  # loader threads / processes
    channels_last: bool = False
    # train | train+val (the authors pretrained on train+val); val and test stay for evaluation
    ssl_splits: str = "train"
    # Pretrain on a seeded, class-stratified fraction of the train split (the paper's data-amount
    # study); the same subset for every run and seed. The ffcv and torch backends.
    train_fraction: float = 1.0
    aug: AugPolicy = field(default_factory=AugPolicy)


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # resnet_micro | resnet_tiny | resnet18 | resnet50
    dim: int = 128  # MoCo feature dim (MoCo-v2; the authors' configs)
    mlp_hidden: int = 0  # 0: the backbone's feature width (2048 for ResNet-50, as in MoCo-v2)
    queue_size: int = 65536
    momentum: float = 0.999  # key-encoder EMA
    temperature: float = 0.2
    shuffle_bn: str = "shuffle"  # shuffle | sync | none: how the key encoder's BN avoids the query's statistics
    # BN groups per process (shuffle only): each normalised apart, as on that many devices, the key
    # encoder's groups a random reassignment. 0 = auto: the authors' 64 images per device
    # (4 GPUs x 64), i.e. data.batch_size // 64, at least 2 on one process (see bn_groups()).
    bn_groups: int = 0


@dataclass
class HPTConfig:
    base: str = "none"  # checkpoint path | torchvision:resnet50 | none (random init)
    mode: str = "full"  # full | bn (HPT-BN: convs frozen, BN + head train)
    freeze_stages: int = 0  # additionally freeze stem + the first k ResNet stages
    trust_checkpoint: bool = False  # true: a base that pickles more than tensors is unpickled in full (runs its code)
    # conv1 from a base of other input channels than the data's bands (an RGB base, 13-band data):
    # auto | rgb | mean (fasthpt.models.backbones.CONV1_STRATEGIES; the one used is in base.json)
    conv1: str = "auto"
    # a base lacking backbone tensors (a whole stage, BN statistics) is refused; true: they start at
    # random init (listed in base.json)
    allow_missing: bool = False


@dataclass
class OptimConfig:
    lr: float = 0.03  # per 256 images; scaled linearly with the global batch
    momentum: float = 0.9
    weight_decay: float = 1e-4  # MoCo-v2 / the authors' SGD
    # decay every parameter, BN and biases too, as MoCo and the authors do; false: ndim > 1 only
    wd_norm_bias: bool = True
    warmup: str = "0ba"


@dataclass
class TrainConfig:
    max_duration: str = "5000ba"
    precision: str = "auto"  # auto: amp_bf16 on a GPU, fp32 on the CPU
    algorithms: list[str] = field(default_factory=list)
    seed: int = 17
    save_interval: str = "1000ba"
    save_num_checkpoints_to_keep: int = 2
    autoresume: bool = True
    log_interval: str = "10ba"
    knn_interval: str = "0ba"  # 0ba: kNN monitor off
    knn_k: int = 20
    knn_t: float = 0.07
    # Convergence in a run: stop when the kNN monitor (on val, every knn_interval) has not improved
    # its best by more than plateau_delta for plateau_patience evaluations; plateau.json says where.
    stop_on_plateau: bool = False
    plateau_patience: int = 3
    plateau_delta: float = 0.005
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


@dataclass(frozen=True)
class Durations:
    """A run's durations as batch counts; an interval of 0 switches its feature off."""

    max_duration: int
    warmup: int
    save_interval: int
    log_interval: int
    knn_interval: int


@dataclass
class RunConfig:
    name: str = "hpt"
    run_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    hpt: HPTConfig = field(default_factory=HPTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) / self.name

    @property
    def durations(self) -> Durations:
        """The durations in batches, parsed on each read rather than stored: a stage's config is
        derived by assigning its max_duration (fasthpt.hpt.stage_configs), and a stored copy would
        keep the old count. A spelling ``validate`` would refuse raises its UserError here too."""
        t = self.train
        return Durations(max_duration=_batches("train.max_duration", t.max_duration),
                         warmup=_batches("optim.warmup", self.optim.warmup),
                         save_interval=_batches("train.save_interval", t.save_interval),
                         log_interval=_batches("train.log_interval", t.log_interval),
                         knn_interval=_batches("train.knn_interval", t.knn_interval))


def explain(exc: OmegaConfBaseException, schema: type = None) -> UserError:
    """One line for an OmegaConf error against a structured ``schema`` (RunConfig by default):
    an unknown key names the valid keys beside it; a bad value names its key."""
    key = getattr(exc, "full_key", None) or ""
    msg = clipped(str(exc).splitlines()[0], 200)  # OmegaConf's message quotes the whole value
    if "not in struct" in msg or ("Key '" in msg and "not" in msg):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.structured(schema or RunConfig)
        node = OmegaConf.select(node, parent) if parent else node
        valid = ", ".join(node.keys()) if hasattr(node, "keys") else "(none)"
        return UserError(f"unknown config key {shown(key)}; valid keys here: {valid}")
    return UserError(f"bad value for config key {shown(key)}: {msg}")


def validate(cfg: RunConfig) -> RunConfig:
    """Every choice, duration and numeric key against its valid range; one line naming the first
    bad key. ``check_queue`` adds the queue's bound once the world size is known. A config that
    passes has durations ``RunConfig.durations`` can count."""
    choices = {
        "data.backend": (cfg.data.backend, BACKEND_CHOICES),
        "model.shuffle_bn": (cfg.model.shuffle_bn, ("shuffle", "sync", "none")),
        "data.ssl_splits": (cfg.data.ssl_splits, SSL_SPLITS),
        "hpt.mode": (cfg.hpt.mode, ("full", "bn")),
        "hpt.conv1": (cfg.hpt.conv1, CONV1_STRATEGIES),
        "train.precision": (cfg.train.precision, ("auto", "fp32", "amp_bf16", "amp_fp16")),
    }
    for stage in cfg.stages:
        choices[f"stages.{stage.name}.mode"] = (stage.mode, ("full", "bn"))
    choices["model.arch"] = (cfg.model.arch, ARCH_NAMES)
    for i, name in enumerate(cfg.train.algorithms):
        choices[f"train.algorithms[{i}]"] = (name, ALGORITHM_NAMES)
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise UserError(f"config key {key!r} is {shown(value)}; valid: {', '.join(valid)}")
    _check_names(cfg)
    _check_base(cfg)
    for key, value, ok, valid in _ranges(cfg) + _duration_ranges(cfg):
        if not ok(value):
            raise UserError(f"config key {key!r} is {shown(value)}; valid: {valid}")
    if cfg.data.train_fraction < 1 and cfg.data.ssl_splits != "train":
        raise UserError("config key 'data.train_fraction' takes a fraction of the train split; it cannot be "
                        f"combined with data.ssl_splits={cfg.data.ssl_splits}")
    if cfg.train.stop_on_plateau and cfg.durations.knn_interval == 0:
        raise UserError("config key 'train.stop_on_plateau' needs train.knn_interval > 0: the kNN monitor on "
                        "val is what it watches, e.g. train.knn_interval=100ba")
    cfg.data.aug.validate()
    check_queue(cfg, world_size=1)
    return cfg


def check_queue(cfg: RunConfig, world_size: int) -> None:
    """MoCo enqueues the keys of the whole global batch every step (MoCo's reference code asserts
    ``K % batch_size == 0``); a queue that cannot hold one batch keeps no negatives from earlier
    batches, so it is refused rather than trained silently."""
    batch = cfg.data.global_batch or cfg.data.batch_size * world_size
    processes = f"{world_size} process" + ("es" if world_size > 1 else "")
    given = (f"data.global_batch {batch}" if cfg.data.global_batch
             else f"data.batch_size {cfg.data.batch_size} x {processes}")
    if cfg.model.queue_size < batch:
        raise UserError(f"config key 'model.queue_size' is {cfg.model.queue_size}; valid: >= the global batch "
                        f"{batch} ({given}), since MoCo enqueues a whole batch of keys per step")


def per_process(cfg: RunConfig, world_size: int) -> RunConfig:
    """``cfg`` as it runs on ``world_size`` processes: with data.global_batch, a copy whose
    data.batch_size is global_batch / world_size (the BN groups follow it: bn_groups()); else
    ``cfg`` itself. Refused: a global batch the process count does not divide, and a data.batch_size
    that is neither its default nor the derived one (two batches given, one would be ignored)."""
    g, given = cfg.data.global_batch, cfg.data.batch_size
    if not g:
        return cfg
    processes = f"{world_size} process" + ("es" if world_size > 1 else "")
    if g % world_size:
        raise UserError(f"config key 'data.global_batch' is {g}; valid: a multiple of the {processes} it runs on, "
                        f"each taking an equal share")
    derived = g // world_size
    if given not in (derived, DataConfig.batch_size):
        raise UserError(f"config keys 'data.global_batch' ({g}) and 'data.batch_size' ({given}) are both set: on "
                        f"{processes} the per-process batch is {derived}; give one (data.global_batch=0 keeps "
                        f"data.batch_size per process)")
    out = copy.deepcopy(cfg)
    out.data.batch_size = derived
    return out


def batch_summary(cfg: RunConfig, world_size: int) -> str:
    """What a derived config trains with, in one line (logged by the run)."""
    groups = bn_groups(cfg, world_size)
    return (f"data.global_batch {cfg.data.global_batch} on {world_size} process(es): data.batch_size "
            f"{cfg.data.batch_size} per process, {groups} BN group(s) of {cfg.data.batch_size // groups} per process")


def bn_groups(cfg: RunConfig, world_size: int) -> int:
    """BN groups per process for ``cfg`` on ``world_size`` processes: ``model.bn_groups`` when set;
    auto: one per 64 images of the per-process batch, at least 2 on one process (a single process
    otherwise normalises keys and queries over the same batch: the leak shuffle-BN prevents), the
    largest such count that divides the batch. 1 without shuffle (sync or none)."""
    m, batch = cfg.model, cfg.data.batch_size  # per process: per_process() derives it from a global batch
    if m.shuffle_bn != "shuffle":
        return 1
    if m.bn_groups:
        return m.bn_groups
    want = max(2 if world_size == 1 else 1, batch // AUTHORS_BATCH_PER_DEVICE)
    return next(g for g in range(min(want, batch), 0, -1) if batch % g == 0)


def _finite(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    """A predicate for a number in [lo, hi] (ends open when asked); NaN and inf never pass."""
    return lambda v: (isinstance(v, (int, float)) and math.isfinite(v) and (v > lo if lo_open else v >= lo)
                      and (v < hi if hi_open else v <= hi))


def _ranges(cfg: RunConfig) -> list[tuple]:
    """(key, value, predicate, valid range as text) for every numeric key."""
    d, m, h, o, t = cfg.data, cfg.model, cfg.hpt, cfg.optim, cfg.train
    batch = d.global_batch or d.batch_size  # on one process (a run re-checks its derived batch)
    return [
        ("data.res", d.res, _finite(1), ">= 1"),
        ("data.batch_size", d.batch_size, _finite(1), ">= 1"),
        ("data.global_batch", d.global_batch, _finite(0), ">= 0 (0: data.batch_size is per process)"),
        ("data.workers", d.workers, _finite(0), ">= 0"),
        ("data.train_fraction", d.train_fraction, _finite(0, 1, lo_open=True), "(0, 1]"),
        ("model.dim", m.dim, _finite(1), ">= 1"),
        ("model.mlp_hidden", m.mlp_hidden, _finite(0), ">= 0 (0: the backbone's feature width)"),
        ("model.queue_size", m.queue_size, _finite(1), ">= 1"),
        ("model.bn_groups", m.bn_groups, lambda v: v == 0 or (_finite(1)(v) and batch % v == 0),
         f"0 (auto) or a divisor of the per-process batch {batch}"),
        ("model.momentum", m.momentum, _finite(0, 1), "[0, 1] (key-encoder EMA; 1 freezes the key encoder)"),
        ("model.temperature", m.temperature, _finite(0, lo_open=True), "> 0"),
        ("hpt.freeze_stages", h.freeze_stages, _finite(0, 4), "0..4"),
        ("optim.lr", o.lr, _finite(0, lo_open=True), "> 0"),
        ("optim.momentum", o.momentum, _finite(0, 1, hi_open=True), "[0, 1)"),
        ("optim.weight_decay", o.weight_decay, _finite(0), ">= 0"),
        ("train.seed", t.seed, _finite(0, 2**32, hi_open=True), "0 <= seed < 2**32 (numpy's seed range)"),
        # 0 would keep no checkpoint at all on local disk (Composer: 0 = keep none), so nothing to resume
        ("train.save_num_checkpoints_to_keep", t.save_num_checkpoints_to_keep,
         lambda v: v == -1 or v >= 1, "-1 (keep all) or >= 1"),
        ("train.knn_k", t.knn_k, _finite(1), ">= 1"),
        ("train.knn_t", t.knn_t, _finite(0, lo_open=True), "> 0"),
        ("train.plateau_patience", t.plateau_patience, _finite(1), ">= 1 evaluations"),
        ("train.plateau_delta", t.plateau_delta, _finite(0, 1), "[0, 1] (accuracy as a fraction)"),
    ]


def _duration_ranges(cfg: RunConfig) -> list[tuple]:
    """Durations in batches: each run trains >= 1 batch; an interval of 0 switches its feature off;
    warmup ends before the shortest run that uses it (a run that is all warmup never reaches lr)."""
    t = cfg.train
    # with stages, each stage's max_duration replaces train.max_duration (fasthpt.hpt.stage_configs)
    runs = ({f"stages.{s.name}.max_duration": s.max_duration for s in cfg.stages}
            or {"train.max_duration": t.max_duration})
    spans = {"train.max_duration": t.max_duration, **runs}
    intervals = {"train.save_interval": t.save_interval, "train.log_interval": t.log_interval,
                 "train.knn_interval": t.knn_interval}
    for key, value in {**spans, **intervals, "optim.warmup": cfg.optim.warmup}.items():
        _batches(key, value)  # the spelling first: the predicates below parse it
    shortest = min(_batches(key, value) for key, value in runs.items())
    return ([(key, value, _in_batches(_finite(1)), ">= 1 batch, e.g. '5000ba'") for key, value in spans.items()]
            + [(key, value, _in_batches(_finite(0)), ">= 0 batches (0: off), e.g. '100ba'")
               for key, value in intervals.items()]
            + [("optim.warmup", cfg.optim.warmup, _in_batches(_finite(0, shortest, hi_open=True)),
                f"0ba <= warmup < the run's max_duration ({shortest}ba)")])


def _in_batches(ok):
    return lambda value: ok(_batches("", value))


def _batches(key: str, value) -> int:
    """'500ba' -> 500; the one spelling of a duration the config takes."""
    if not _BATCHES.match(str(value)):
        raise UserError(f"config key {key!r} is {shown(value)}; give a number of batches, e.g. '5000ba'")
    return int(str(value)[:-2])


def _check_names(cfg: RunConfig) -> None:
    """Run and stage names become folder names below run_dir (fasthpt.names), stage names unique."""
    names = {"name": cfg.name, **{f"stages[{i}].name": s.name for i, s in enumerate(cfg.stages)}}
    for key, value in names.items():
        check_name(f"config key {key!r}", value, "; run_dir= chooses where runs go")
    stage_names = [s.name for s in cfg.stages]
    if len(set(stage_names)) != len(stage_names):
        raise UserError(f"config key 'stages': stage names must be unique, got {stage_names}")


def _check_base(cfg: RunConfig) -> None:
    """HPT-BN and frozen stages keep convolutions as the base gave them: from random init
    (hpt.base=none) they would train BatchNorm over random features. The first stage of a chain
    starts from hpt.base; the later ones from the previous stage."""
    if cfg.hpt.base not in ("none", "random", ""):
        return
    first_mode = cfg.stages[0].mode if cfg.stages else cfg.hpt.mode
    key = "stages[0].mode" if cfg.stages else "hpt.mode"
    if first_mode == "bn":
        raise UserError(f"config key {key!r} is 'bn' with hpt.base=none: HPT-BN freezes every convolution, "
                        "which would stay at random init; give hpt.base a checkpoint, or use mode full")
    if cfg.hpt.freeze_stages:
        raise UserError(f"config key 'hpt.freeze_stages' is {cfg.hpt.freeze_stages} with hpt.base=none: the frozen "
                        "stages would stay at random init; give hpt.base a checkpoint, or hpt.freeze_stages=0")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load ``path`` (YAML) over the typed defaults, apply ``key=value`` overrides, validate."""
    schema = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(schema, True)
    try:
        merged = schema
        if path is not None:
            merged = OmegaConf.merge(merged, _read_yaml(Path(path)))
        bad = [o for o in overrides or [] if "=" not in o]
        if bad:
            raise UserError(f"overrides must be key=value, got {shown(bad[0])}")
        for item in overrides or []:  # one at a time, so that a syntax error names its override
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
            except yaml.YAMLError as exc:
                raise UserError(f"override {shown(item)}: YAML syntax error: {_yaml_problem(exc)}") from None
            except ValueError as exc:  # an integer of more digits than Python converts
                raise UserError(f"override {shown(item)}: {_unreadable(exc)}") from None
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise explain(exc) from None
    return validate(cfg)


def _read_yaml(path: Path):
    """The file's mapping, or one line naming the file (and line:column for a syntax error)."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: YAML syntax error: {_yaml_problem(exc)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise UserError(f"{path}: {_unreadable(exc)}") from None
    if not isinstance(node, DictConfig):
        raise UserError(f"{path}: the top level must be a mapping of config keys (name:, data:, ...)")
    return node


def _unreadable(exc: ValueError) -> str:
    """A value YAML parsed but Python refused to build, in a few words (not the fix Python suggests)."""
    return f"a value cannot be read ({clipped(str(exc).split(';')[0], 200)})"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and, when it names one, the construct it was reading ('while parsing ...')."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    return f"{problem} ({context} at line {mark.line + 1})" if context and mark else problem


# Keys a relaunch may change and still continue the same run: they decide how batches are made
# and computed, what is reported, and how checkpoints are kept, not what is learned. Every other
# key (model, optimizer, data, augmentation, seed, schedule: max_duration and warmup set the
# cosine's length, so a longer run is another run, as in HPT's per-budget schedules) must match.
RELAUNCH_MAY_CHANGE = frozenset({
    "run_dir", "name",  # the run folder itself is what is compared
    "data.workers", "data.backend", "data.channels_last", "train.precision",
    "train.progress_bar", "train.console_log", "train.tensorboard", "train.log_interval",
    "train.knn_interval", "train.knn_k", "train.knn_t",
    "train.save_interval", "train.save_num_checkpoints_to_keep", "train.autoresume",
    "hpt.trust_checkpoint",  # permission to read the base file, which a resumed run replaces anyway
})


def config_differences(old: RunConfig, new: RunConfig) -> list[tuple[str, object, object]]:
    """(key, old value, new value) for each key outside ``RELAUNCH_MAY_CHANGE`` that differs,
    in schema order; lists (stages, algorithms, aug ranges) compare whole."""
    a, b = (_flatten(OmegaConf.to_container(OmegaConf.structured(c))) for c in (old, new))
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k), b.get(k)) for k in keys if k not in RELAUNCH_MAY_CHANGE and a.get(k) != b.get(k)]


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config atomically (fasthpt.fileio)."""
    atomic_write_text(path, to_yaml(cfg))
