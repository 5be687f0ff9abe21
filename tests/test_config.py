import pytest

from fasthpt.config import RunConfig, load_config, save_config
from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError


def test_defaults_follow_hpt_card():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert (cfg.model.queue_size, cfg.model.dim, cfg.model.momentum, cfg.model.temperature) == (65536, 128, 0.999, 0.2)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.03, 0.9, 1e-4)
    assert cfg.data.aug.hue == 0.4 and cfg.data.aug.crop_scale == [0.2, 1.0]


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndata:\n  res: 32\n  aug:\n    gray_p: 0.0\n")
    cfg = load_config(path, ["model.arch=resnet50", "optim.lr=0.06", "data.aug.blur_sigma=[0.5,1.0]"])
    assert (cfg.name, cfg.data.res, cfg.data.aug.gray_p) == ("x", 32, 0.0)
    assert cfg.model.arch == "resnet50" and cfg.optim.lr == 0.06 and cfg.data.aug.blur_sigma == [0.5, 1.0]


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["name=r", "train.algorithms=[channels_last]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.archh=resnet18", "model.archh"),
        ("data.res=big", "data.res"),
        ("nonsense=1", "nonsense"),
        ("data.backend=cuda", "data.backend"),
        ("data.aug.gray_p=1.5", "gray_p"),
    ],
)
def test_bad_keys_and_values_are_named(override, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UserError) as err:
        load_config(None, ["model.archh=resnet18"])
    assert "arch" in str(err.value) and "queue_size" in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_policy_presets_and_kernel_size():
    assert AugPolicy.preset("crop-only").jitter_p == 0 and AugPolicy.preset("crop-only").blur_p == 0
    assert AugPolicy.preset("mocov2-hue0.1").hue == 0.1
    p = AugPolicy()
    assert p.blur_kernel_size(224, 2.0) == 13  # radius ceil(3*2) = 6
    assert p.blur_kernel_size(224, 0.1) == 3
    assert p.blur_kernel_size(64, 2.0) == 7  # capped near 10% of 64 px (odd)
    with pytest.raises(UserError):
        AugPolicy.preset("nope")
