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
    # The paper's recipe (Reed et al. 2022, the authors' configs): ResNet-50, MoCo-v2 defaults, global
    # batch 256 on 4 processes, lr 0.03.
    assert cfg.model.arch == "resnet50" and cfg.data.res == 224 and cfg.data.batch_size * 4 == 256
    assert (cfg.model.queue_size, cfg.model.dim, cfg.model.mlp_hidden) == (65536, 128, 2048)
    assert cfg.optim.lr == 0.03 and cfg.data.aug.hue == 0.4
    budgets = [r.train.max_duration for r in runs]
    if "scratch" in path.stem:
        assert budgets == ["400000ba"]
    elif path.stem == "ucmerced-hpt":  # the authors' chain: RESISC-45 at 50k, then UC Merced at 5k
        assert [r.name for r in runs] == ["resisc45", "ucmerced"] and budgets == ["50000ba", "5000ba"]
    else:
        assert budgets == ["5000ba"]
    assert (runs[0].hpt.base == "none") == ("scratch" in path.stem)


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
