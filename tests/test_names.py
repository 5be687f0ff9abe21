"""A name is one path component: run, stage, demo-preset, shipped-base and dataset names that hold a
path ('..', absolute, separators, empty, NUL, control characters, too long) are refused in one line,
and nothing is written outside the folder the user chose."""

from __future__ import annotations

import pytest

from fasthpt.cli import main as cli_main
from fasthpt.config import load_config, save_config
from fasthpt.errors import UserError
from fasthpt.names import check_name, name_problem

PATHS = ["../../escaped", "..", ".", "", "/tmp/abs", "a/b", "a\\b", "a\x00b", "a\nb", "x" * 256, "é" * 128]
NAMES = ["hpt", "hpt-r18.s0", "run 1", "x" * 255, "é" * 127, "..a", "a..b"]


@pytest.mark.parametrize("value", PATHS)
def test_a_path_or_non_name_is_refused(value):
    assert name_problem(value) is not None
    with pytest.raises(UserError) as err:
        check_name("name", value)
    assert "\n" not in str(err.value) and "one folder name" in str(err.value)


@pytest.mark.parametrize("value", NAMES)
def test_folder_names_pass(value):
    assert check_name("name", value) == value


@pytest.mark.parametrize("value", [v for v in PATHS if v])  # '' reads as a missing value in overrides
@pytest.mark.parametrize("key", ["name", "stage"])
def test_run_and_stage_names_holding_a_path_are_refused(tmp_path, key, value):
    cfg = load_config(None, [f"run_dir={tmp_path / 'runs'}"])
    if key == "name":
        cfg.name = value
    else:
        cfg = load_config(None, [f"run_dir={tmp_path / 'runs'}", "stages=[{name: a}, {name: b}]"])
        cfg.stages[1].name = value
    from fasthpt.config import validate

    with pytest.raises(UserError, match="one folder name"):
        validate(cfg)


@pytest.mark.parametrize("name", ["../../escaped", "/ABS/escaped", "sub/escaped"])
def test_pretrain_with_a_path_as_name_writes_nothing_anywhere(tmp_path, capsys, name):
    name = name.replace("/ABS", str(tmp_path / "abs"))
    config = tmp_path / "c.yaml"
    save_config(load_config(None, [f"run_dir={tmp_path / 'a' / 'b' / 'runs'}"]), config)
    code = cli_main(["pretrain", str(config), f"name={name}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "a path where a name is expected" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no run folder, inside or out


def test_a_saved_config_with_a_path_as_name_is_refused_when_read(tmp_path):
    (tmp_path / "c.yaml").write_text("name: ../../x\n")
    with pytest.raises(UserError, match="config key 'name' is '../../x'"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("value", ["../../x", "/abs", "a/b", ".."])
def test_demo_preset_names_and_shipped_base_names_are_checked(value):
    from fasthpt.experiment.assets import resolve
    from fasthpt.experiment.preset import load_preset, preset_path

    with pytest.raises(UserError, match="preset key 'name'"):
        load_preset(preset_path("default"), [f"name={value}"])
    with pytest.raises(UserError, match="embedded:NAME"):
        resolve(f"embedded:{value}")


@pytest.mark.parametrize("dataset", ["../x", "/abs", "a/b", "", ".", "..", "ab\n", "a\x00b", "x" * 256])
def test_prep_dataset_names_holding_a_path_are_refused_before_any_work(tmp_path, tiny_folder, dataset):
    from dataprep import prepare

    with pytest.raises(UserError, match="--dataset .*a folder name"):
        prepare(dataset, out=tmp_path / "out", src=tiny_folder, progress=False)
    assert list(tmp_path.iterdir()) == []
