import re
from pathlib import Path

import pytest

from fasthpt.config import load_config
from fasthpt.experiment.preset import SCALES, load_preset, preset_path
from fasthpt.hpt import stage_configs

PRESETS = {preset_path(s) for s in SCALES}  # `fasthpt demo` presets, not run configs
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml") if p not in PRESETS)


def test_there_are_demo_and_paper_presets():
    names = {p.stem for p in CONFIGS}
    assert {"demo-base", "demo-hpt", "demo-hpt-bn", "demo-scratch"} <= names
    assert {"resisc45-hpt", "resisc45-hpt-bn", "resisc45-scratch", "ucmerced-hpt", "eurosat-hpt"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_preset_loads_strictly_and_matches_its_scale(path):
    cfg = load_config(path)
    runs = stage_configs(cfg)
    if path.stem.startswith("demo-"):  # single runs of `make demo`, in step with its preset
        demo = load_preset(preset_path("default"))
        base = path.stem in ("demo-base", "demo-chain")
        p = demo.base.pretrain if base else demo.pretrain
        assert (cfg.model.arch, cfg.data.res, cfg.data.batch_size, cfg.model.queue_size, cfg.optim.lr,
                cfg.data.backend) == (p.arch, p.res, p.batch_size, p.queue_size, p.lr, p.backend)
        stages = [s.data for s in demo.base.chain] if base else [demo.target]
        assert [Path(r.data.path).name for r in runs] == [d.dataset for d in stages][:len(runs)]
        budgets = [int(r.train.max_duration.removesuffix("ba")) for r in runs]
        want = {"demo-scratch": [demo.grid.scratch_cap], "demo-hpt": [max(demo.grid.hpt)],
                "demo-hpt-bn": [max(demo.grid.hpt_bn)]}.get(path.stem, [s.iters for s in demo.base.chain])
        assert budgets == want[:len(runs)]
        return
    # The paper's recipe (Reed et al. 2022, the authors' configs): ResNet-50, MoCo-v2 defaults, lr 0.03;
    # data, budgets and batch: test_paper_presets_are_the_authors below.
    assert cfg.model.arch == "resnet50" and cfg.data.res == 224
    assert (cfg.model.queue_size, cfg.model.dim, cfg.model.mlp_hidden) == (65536, 128, 2048)
    assert cfg.optim.lr == 0.03 and cfg.data.aug.hue == 0.4
    assert (runs[0].hpt.base == "none") == ("scratch" in path.stem)


# The authors' values for each paper preset (github.com/cjrd/self-supervised-pretraining), and the files
# they come from. EuroSAT is not in the paper: its presets take the RESISC-45 recipe.
HPT = "OpenSelfSup/configs/hpt-pretrain/"
SH = "utils/pretrain-configs/"
HPT_GRID, HPT_BN_GRID, SCRATCH_GRID = [50, 500, 5000, 50000], [50, 500, 5000], [5000, 50000, 100000, 200000]
AUTHORS = {
    "resisc45-hpt": dict(data=["data/resisc45"], budgets=[5000], grid=HPT_GRID, source=[
        HPT + "resisc/base-resisc-config.py", HPT + "resisc/moco_v2_800ep_basetrain/5000-iters.py",
        SH + "resisc45.sh"]),
    "resisc45-hpt-bn": dict(data=["data/resisc45"], budgets=[5000], grid=HPT_BN_GRID, source=[
        HPT + "resisc/moco_v2_800ep_basetrain/5000bn-iters.py", SH + "resisc45-bn.sh"]),
    "resisc45-scratch": dict(data=["data/resisc45"], budgets=[200000], grid=SCRATCH_GRID, source=[
        HPT + "resisc/no_basetrain/{5000,50000,100000,200000}-iters.py", SH + "resisc45.sh"]),
    "ucmerced-hpt": dict(data=["data/resisc45", "data/ucmerced"], budgets=[50000, 5000], grid=HPT_GRID, source=[
        HPT + "resisc-ucmerced/base-resisc-ucmerced-config.py",
        HPT + "resisc-ucmerced/moco_v2_800ep_resisc_50000it_basetrain/5000-iters.py", SH + "resisc-ucmerced.sh"]),
    "ucmerced-scratch": dict(data=["data/ucmerced"], budgets=[200000], grid=SCRATCH_GRID, source=[
        HPT + "ucmerced/base-ucmerced-config.py", HPT + "ucmerced/no_basetrain/{5000,50000,100000,200000}-iters.py"]),
    "eurosat-hpt": dict(data=["data/eurosat"], budgets=[5000], grid=HPT_GRID, source=[
        HPT + "resisc/base-resisc-config.py", SH + "resisc45.sh"]),
    "eurosat-scratch": dict(data=["data/eurosat"], budgets=[200000], grid=SCRATCH_GRID, source=[
        HPT + "resisc/no_basetrain/{5000,50000,100000,200000}-iters.py", SH + "resisc45.sh"]),
}
# Every paper preset pretrains on train+val (train-val.txt, train_val_combined[_repeat].txt in the
# configs above) with a global batch of 256 (batch_size=256, or imgs_per_gpu=64 on their 4 GPUs).
AUTHORS_SPLITS, AUTHORS_GLOBAL_BATCH = "train+val", 256
PAPER = [p for p in CONFIGS if not p.stem.startswith("demo-")]


def test_every_paper_preset_has_a_row():
    assert sorted(p.stem for p in PAPER) == sorted(AUTHORS)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_presets_are_the_authors(path):
    from fasthpt.config import per_process

    want, cfg, text = AUTHORS[path.stem], load_config(path), path.read_text()
    runs = stage_configs(cfg)
    assert [r.data.path for r in runs] == want["data"]
    assert all(r.data.ssl_splits == AUTHORS_SPLITS for r in runs)
    assert [r.durations.max_duration for r in runs] == want["budgets"]
    assert cfg.data.global_batch == AUTHORS_GLOBAL_BATCH
    # the same recipe on one GPU and on the authors' 4: 256 images a step, BN groups of 64
    for world, per in ((1, 256), (4, 64)):
        assert per_process(cfg, world).data.batch_size == per
    grid = re.search(r"budgets \(the authors' [^)]*\): ([\d, ]+) iterations", text)
    assert grid and [int(v) for v in grid[1].split(",")] == want["grid"]
    assert max(want["budgets"]) in want["grid"]
    # the preset names where its values come from
    for source in want["source"]:
        assert source.removeprefix(HPT).removeprefix("utils/").split("/{")[0].split("/")[-1] in text, source


def test_config_name_lists_match_the_implementations():
    from fasthpt.algorithms import ALGORITHMS
    from fasthpt.config import ALGORITHM_NAMES, ARCH_NAMES
    from fasthpt.models.backbones import ARCHS

    assert set(ARCH_NAMES) == set(ARCHS) and set(ALGORITHM_NAMES) == set(ALGORITHMS)


@pytest.mark.parametrize("override, needle", [
    ("train.algorithms=[turbo]", "train.algorithms[0]"),
    ("model.arch=vit", "model.arch"),
    ("train.max_duration=5000", "train.max_duration"),
    ("train.knn_interval=1ep", "train.knn_interval"),
    ("hpt.freeze_stages=5", "hpt.freeze_stages"),
])
def test_bad_values_fail_before_any_work(override, needle):
    from fasthpt.errors import UserError

    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])
