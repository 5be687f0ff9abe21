import pytest

from fasthpt.config import (
    RELAUNCH_MAY_CHANGE,
    Durations,
    RunConfig,
    check_queue,
    config_differences,
    load_config,
    save_config,
)
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
    assert p.sigma_range(224) == (0.1, 2.0)  # MoCo-v2's range, in pixels of a 224 px view
    assert p.sigma_range(56) == pytest.approx((0.025, 0.5))  # the same fraction of a 56 px view
    assert p.blur_kernel_size(56) == 5  # radius ceil(3 * 0.5): the cap (5 at 56 px) does not bind
    assert AugPolicy(blur_ref_res=0).sigma_range(56) == (0.1, 2.0)
    with pytest.raises(UserError, match="blur_ref_res"):
        AugPolicy(blur_ref_res=-1).validate()
    with pytest.raises(UserError):
        AugPolicy.preset("nope")


@pytest.mark.parametrize(
    "override, valid",
    [
        ("optim.lr=0", "> 0"),
        ("optim.lr=-0.1", "> 0"),
        ("optim.lr=nan", "> 0"),
        ("optim.momentum=1.0", "[0, 1)"),
        ("optim.weight_decay=-1e-4", ">= 0"),
        ("model.queue_size=0", ">= 1"),
        ("model.dim=0", ">= 1"),
        ("model.temperature=0", "> 0"),
        ("model.momentum=1.5", "[0, 1]"),
        ("data.workers=-1", ">= 0"),
        ("train.max_duration=0ba", ">= 1 batch"),
        ("train.save_num_checkpoints_to_keep=0", "-1 (keep all) or >= 1"),
        ("train.knn_k=0", ">= 1"),
        ("train.seed=-1", "0 <= seed < 2**32"),
        ("optim.warmup=5000ba", "0ba <= warmup < the run's max_duration (5000ba)"),
    ],
)
def test_numeric_keys_out_of_range_name_key_and_range(override, valid):
    key = override.split("=")[0]
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert f"config key {key!r} is " in str(err.value) and f"valid: {valid}" in str(err.value)


def test_stage_duration_and_names_are_checked():
    with pytest.raises(UserError, match=r"'stages\.a\.max_duration' is '0ba'"):
        load_config(None, ["stages=[{name: a, max_duration: 0ba}]"])
    with pytest.raises(UserError, match="stage names must be unique"):
        load_config(None, ["stages=[{name: a}, {name: a}]"])


def test_zero_intervals_switch_their_feature_off():
    cfg = load_config(None, ["train.save_interval=0ba", "train.log_interval=0ba", "train.knn_interval=0ba"])
    assert (cfg.train.save_interval, cfg.train.log_interval) == ("0ba", "0ba")


def test_durations_are_batch_counts_read_from_their_yaml_spelling(tmp_path):
    cfg = load_config(None, ["train.max_duration=300ba", "optim.warmup=20ba", "train.save_interval=0100ba",
                             "train.log_interval=0ba", "train.knn_interval=50ba"])
    assert cfg.durations == Durations(max_duration=300, warmup=20, save_interval=100, log_interval=0, knn_interval=50)
    assert cfg.train.save_interval == "0100ba"  # the config keeps what the user wrote
    save_config(cfg, tmp_path / "config.yaml")
    assert "durations" not in (tmp_path / "config.yaml").read_text()  # counted, never stored
    cfg.train.max_duration = "7ba"  # a stage's config is derived this way: the count follows
    assert cfg.durations.max_duration == 7


def test_a_duration_in_another_unit_is_refused_naming_the_key():
    for value in ("2ep", "500", "1.5ba", "-3ba"):
        with pytest.raises(UserError) as err:
            load_config(None, [f"train.log_interval={value}"])
        assert str(err.value) == (f"config key 'train.log_interval' is {value!r}; give a number of batches, "
                                  f"e.g. '5000ba'")
    cfg = load_config(None)
    cfg.optim.warmup = "10sp"  # set in code after loading: reading the counts says which key
    with pytest.raises(UserError, match="'optim.warmup' is '10sp'"):
        _ = cfg.durations  # a property: reading it runs the check


def test_queue_must_hold_the_global_batch():
    with pytest.raises(UserError, match="valid: >= the global batch 64 "):
        load_config(None, ["model.queue_size=32", "data.batch_size=64"])
    cfg = load_config(None, ["model.queue_size=128", "data.batch_size=64"])
    check_queue(cfg, world_size=2)  # 128 keys: exactly one global batch
    with pytest.raises(UserError, match=r"global batch 256 \(data.batch_size 64 x 4 processes\)"):
        check_queue(cfg, world_size=4)


def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndata:\n  res: [32\n  batch_size: 4\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:4:13: YAML syntax error: did not find expected ',' or ']'")
    assert "\n" not in str(err.value)


def test_override_syntax_error_names_the_override():
    with pytest.raises(UserError, match=r"override 'data.res=\[32': YAML syntax error"):
        load_config(None, ["name=x", "data.res=[32"])


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- name\n- data\n")
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(path)


def test_config_differences_skip_what_a_relaunch_may_change():
    a = load_config(None, ["model.arch=resnet50", "data.workers=2"])
    b = load_config(None, ["model.arch=resnet18", "data.workers=8", "train.progress_bar=false", "optim.lr=0.06"])
    assert config_differences(a, b) == [("model.arch", "resnet50", "resnet18"), ("optim.lr", 0.03, 0.06)]
    assert RELAUNCH_MAY_CHANGE >= {"data.workers", "train.progress_bar"}


@pytest.mark.parametrize("overrides, key", [
    (["hpt.mode=bn"], "'hpt.mode' is 'bn' with hpt.base=none"),
    (["hpt.mode=bn", "hpt.base=random"], "'hpt.mode' is 'bn' with hpt.base=none"),
    (["hpt.freeze_stages=2"], "'hpt.freeze_stages' is 2 with hpt.base=none"),
    (["stages=[{name: a, mode: bn}, {name: b}]"], "'stages[0].mode' is 'bn' with hpt.base=none"),
])
def test_frozen_convolutions_over_a_random_init_are_refused(overrides, key):
    with pytest.raises(UserError, match=r"config key " + key.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, overrides)


def test_frozen_convolutions_from_a_base_or_a_previous_stage_pass():
    assert load_config(None, ["hpt.mode=bn", "hpt.base=x.pt"]).hpt.mode == "bn"
    assert load_config(None, ["stages=[{name: a}, {name: b, mode: bn}]"]).stages[1].mode == "bn"


@pytest.mark.parametrize("text", [
    "model:\n  arch: " + "x" * 10_000_000 + "\n",  # a bad choice
    "data:\n  res: " + "z" * 10_000_000 + "\n",  # a wrong type (OmegaConf's message quotes it)
    "train:\n  seed: " + "1" * 10_000_000 + "\n",  # more digits than Python converts
    "train:\n  max_duration: " + "9" * 4000 + "\n",  # a duration of another spelling
    "x" * 10_000_000 + ": 1\n",  # an unknown key
    "name: " + "n" * 10_000_000 + "\n",
])
def test_a_huge_bad_value_is_one_short_line(tmp_path, text):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        load_config(tmp_path / "c.yaml")
    assert len(str(err.value)) < 600 and "\n" not in str(err.value), str(err.value)[:600]


def test_a_huge_bad_override_is_one_short_line():
    for item in ["train.seed=" + "1" * 100_000, "model.arch=" + "a" * 100_000, "k" * 100_000 + "=1"]:
        with pytest.raises(UserError) as err:
            load_config(None, [item])
        assert len(str(err.value)) < 600, str(err.value)[:600]


def test_the_cli_clips_a_huge_argument_in_its_error_line(capsys):
    from fasthpt.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["eval", "knn", "--backbone", "b", "--data", "d", "--t", "a" * 1_000_000])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err) < 2000 and "--t" in err


def test_a_huge_bad_demo_preset_value_is_one_short_line():
    from fasthpt.experiment.preset import load_preset, preset_path

    for item in ["eval.metric=" + "m" * 100_000, "study.policies=[" + "p" * 100_000 + "]", "x" * 100_000]:
        with pytest.raises(UserError) as err:
            load_preset(preset_path("default"), [item])
        assert len(str(err.value)) < 600, str(err.value)[:600]
