"""Demo presets are strict typed YAML; shipped bases are checked against their recipe's sha256."""

import json

import pytest

from fasthpt.errors import UserError
from fasthpt.experiment import assets
from fasthpt.experiment.preset import SCALES, load_preset, preset_path


@pytest.mark.parametrize("scale", SCALES)
def test_every_shipped_preset_loads_strictly(scale):
    cfg = load_preset(preset_path(scale))
    assert cfg.grid.seeds >= 2 and cfg.eval.metric in ("knn", "linear")
    assert cfg.base.checkpoint or cfg.base.chain


@pytest.mark.parametrize("override, needle", [
    ("grid.seed=3", "unknown config key 'grid.seed'"),
    ("grid.seeds=0", "grid.seeds"),
    ("study.policies=[blurry]", "unknown policy 'blurry'"),
    ("eval.metric=auc", "eval.metric"),
    ("grid.scratch_factor=1", "scratch_factor"),
])
def test_bad_overrides_are_one_line(override, needle):
    with pytest.raises(UserError, match=needle.replace("[", r"\[")):
        load_preset(preset_path("tiny"), [override])


def test_an_embedded_base_is_checked_against_its_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "ASSETS", tmp_path)
    with pytest.raises(UserError, match="no embedded base 'b'"):
        assets.resolve("embedded:b")
    src = tmp_path / "src.pt"
    src.write_bytes(b"weights")
    out = assets.write(str(src), tmp_path / "b.pt", {"preset": "x"})
    path, recipe = assets.resolve("embedded:b")
    assert path == str(out) and recipe["preset"] == "x" and recipe["sha256"] == assets.sha256(out)
    out.write_bytes(b"weights, changed")
    with pytest.raises(UserError, match="does not match the sha256"):
        assets.resolve("embedded:b")
    assert assets.resolve("some/file.pt") == ("some/file.pt", None)
    assert json.loads((tmp_path / "b.json").read_text())["preset"] == "x"
