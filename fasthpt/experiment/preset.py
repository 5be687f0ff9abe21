"""What `fasthpt demo` runs, as a typed, strict config read from YAML (configs/demo*.yaml).

The presets are data: `--scale NAME` reads configs/demo-NAME.yaml (`default` reads configs/demo.yaml),
`--config FILE` a user's own, and `key=value` overrides any field, with the same strictness as a
run config (an unknown key or a wrong type is one line naming the valid keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fasthpt.errors import UserError, shown
from fasthpt.names import check_name

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STUDIES = ("augmentation", "data")


@dataclass
class DataSpec:
    """A dataset: a `fasthpt prep` folder (``path``), or an embedded generator prepared on the fly."""

    dataset: str = "sat"  # embedded generator (sat | natural) when path is empty
    path: str = ""  # a prepared folder (holds manifest.json): the user's own data
    num_images: int = 4000
    image_size: int = 64
    val_frac: float = 0.2  # the embedded dataset's stratified splits (`fasthpt prep --val-frac`)
    test_frac: float = 0.2


@dataclass
class PretrainSpec:
    """Settings a group of pretraining runs shares (MoCo-v2 otherwise at its defaults)."""

    arch: str = "resnet_micro"
    res: int = 32
    batch_size: int = 64
    queue_size: int = 1024
    lr: float = 0.03  # per 256 images, scaled with the batch (MoCo-v2)
    backend: str = "auto"
    workers: int = 2
    algorithms: List[str] = field(default_factory=lambda: ["channels_last"])
    overrides: List[str] = field(default_factory=list)  # further run-config key=value
    parallel_runs: int = 1  # pretraining runs at once, each in its own process on cores / N threads


@dataclass
class StageSpec:
    """One link of the chain that builds the base: MoCo-v2 on ``data``, from the previous link."""

    data: DataSpec = field(default_factory=lambda: DataSpec(dataset="natural"))
    iters: int = 1000  # the most it trains: with plateau_interval it stops at its plateau on its val
    plateau_interval: int = 0  # kNN on the stage's val every N iterations (0: train all iters)
    plateau_patience: int = 3
    plateau_delta: float = 0.005


@dataclass
class BaseSpec:
    """The existing model HPT starts from (the paper's ImageNet MoCo-v2 release): a checkpoint
    file, ``embedded:NAME`` (a base shipped in fasthpt/assets, with its recipe beside it), or
    empty: built here by ``chain`` (base -> source stages) with ``pretrain``'s settings."""

    checkpoint: str = ""
    trust_checkpoint: bool = False
    chain: List[StageSpec] = field(default_factory=lambda: [StageSpec()])
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)


@dataclass
class GridSpec:
    """Budgets, each its own run with its own cosine schedule (the paper's way)."""

    seeds: int = 3
    scratch_start: int = 100
    scratch_factor: int = 3
    scratch_cap: int = 2700  # the grid stops here even if scratch still gains: then it is flagged
    plateau_tol: float = 0.01  # a step counts as scratch's plateau when its mean val gain is at most
    # this (accuracy, 0.01 = 1 point) and not significant at 95%
    plateau_steps: int = 2  # such steps in a row: MoCo from scratch can stall for a step and climb again
    hpt: List[int] = field(default_factory=lambda: [10, 30, 100, 300])
    hpt_bn: List[int] = field(default_factory=lambda: [30, 100, 300])


@dataclass
class EvalSpec:
    metric: str = "knn"  # knn | linear: the headline; both are always reported
    knn_k: List[int] = field(default_factory=lambda: [5, 10, 20, 50])  # chosen on val
    knn_t: List[float] = field(default_factory=lambda: [0.05, 0.07, 0.1])
    linear_iters: int = 300
    linear_batch: int = 256
    linear_lr: float = 30.0  # per 512 images (the paper's)
    batch_size: int = 256
    # the evaluation loaders' backend; empty: pretrain.backend. FFCV compiles each loader's pipeline
    # (8 s for the three splits on the 2-core VM), which dozens of short evaluations pay again and again
    backend: str = ""


@dataclass
class StudySpec:
    """The paper's robustness claims: HPT vs scratch under reduced policies and less target data."""

    policies: List[str] = field(default_factory=lambda: ["crop-only", "crop-blur", "no-color", "no-gray"])
    fractions: List[float] = field(default_factory=lambda: [1.0, 0.25, 0.05])
    seeds: int = 3
    hpt_iterations: int = 0  # 0: the HPT budget of the main experiment that reached scratch's best
    scratch_iterations: int = 0  # 0: scratch's converged budget in the main experiment


@dataclass
class DemoConfig:
    name: str = "default"
    target: DataSpec = field(default_factory=DataSpec)
    base: BaseSpec = field(default_factory=BaseSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    grid: GridSpec = field(default_factory=GridSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    study: StudySpec = field(default_factory=StudySpec)


# The shipped presets; configs/demo-{base,scratch,hpt,hpt-bn,chain}.yaml beside them are single
# `fasthpt pretrain` runs at the default preset's settings (a test keeps them in step).
SCALES = ("default", "tiny", "large", "gpu", "s2")


def preset_path(scale: str) -> Path:
    return CONFIGS / ("demo.yaml" if scale == "default" else f"demo-{scale}.yaml")


def scales() -> list[str]:
    return list(SCALES)


def load_preset(path: str | Path, overrides: Optional[list[str]] = None) -> DemoConfig:
    """The preset at ``path`` over the typed defaults, with ``key=value`` overrides, validated."""
    from fasthpt.config import explain  # one wording for unknown keys and bad values

    path = Path(path)
    if not path.is_file():
        raise UserError(f"demo preset not found: {path}")
    schema = OmegaConf.structured(DemoConfig)
    OmegaConf.set_struct(schema, True)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.load(path))
        for item in overrides or []:
            if "=" not in item:
                raise UserError(f"overrides must be key=value, got {shown(item)}")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise explain(exc, DemoConfig) from None
    return validate(cfg)


def validate(cfg: DemoConfig) -> DemoConfig:
    from fasthpt.data import BACKEND_CHOICES

    g, e = cfg.grid, cfg.eval
    checks = [
        (g.seeds >= 1, f"grid.seeds must be >= 1, got {g.seeds}"),
        (g.scratch_start >= 1 and g.scratch_factor >= 2, "grid.scratch_start must be >= 1 and grid.scratch_factor >= 2"),
        (g.scratch_cap >= g.scratch_start, f"grid.scratch_cap {g.scratch_cap} is below grid.scratch_start"),
        (0 <= g.plateau_tol < 1, f"grid.plateau_tol is an accuracy gain in 0..1, got {g.plateau_tol}"),
        (g.plateau_steps >= 1, f"grid.plateau_steps must be >= 1, got {g.plateau_steps}"),
        (all(b >= 1 for b in g.hpt + g.hpt_bn), "grid.hpt and grid.hpt_bn budgets must be >= 1"),
        (e.metric in ("knn", "linear"), f"eval.metric must be knn or linear, got {shown(e.metric)}"),
        (bool(e.knn_k) and bool(e.knn_t), "eval.knn_k and eval.knn_t need at least one value each"),
        (e.backend in ("", *BACKEND_CHOICES), f"eval.backend must be empty (pretrain.backend) or one of "
                                                f"{', '.join(BACKEND_CHOICES)}, got {shown(e.backend)}"),
        (all(0 < f <= 1 for f in cfg.study.fractions), "study.fractions must be in (0, 1]"),
        (cfg.study.seeds >= 1, "study.seeds must be >= 1"),
        (all(st.iters >= 1 for st in cfg.base.chain), "base.chain: every stage's iters must be >= 1"),
        (bool(cfg.base.checkpoint) or bool(cfg.base.chain), "base: give a checkpoint, or a chain that builds one"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    # the name becomes folder names: runs/demo-NAME, DATA/demo-NAME
    check_name("preset key 'name'", cfg.name, "; --out and --data choose where the demo writes")
    from fasthpt.data.policy import PRESETS

    bad = [p for p in cfg.study.policies if p not in PRESETS]
    if bad:
        raise UserError(f"study.policies: unknown policy {shown(bad[0])}; valid: {', '.join(PRESETS)}")
    return cfg


def to_yaml(cfg) -> str:
    """A preset (or any part of one) as YAML."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
