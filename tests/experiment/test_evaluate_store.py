"""Evaluations are stored and read back by a later call of the demo (fasthpt.experiment.evaluate),
keyed by what changes their numbers and by nothing else."""

import json

import pytest

from fasthpt.experiment import evaluate as E
from fasthpt.experiment.preset import load_preset, preset_path

MANIFEST = {"fingerprint": {"kind": "generator", "generator": "sat-target", "seed": 0}, "bands": 3, "dtype": "uint8",
            "splits": {"train": {"count": 8}, "val": {"count": 4}, "test": {"count": 4}}, "mean": [1.0, 2.0, 3.0],
            "std": [1.0, 1.0, 1.0], "storage": {"encoding": "jpeg"}, "timing": {"total_s": 1.0}, "created": "then"}


@pytest.fixture
def world(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps(MANIFEST))
    backbone = tmp_path / "backbone.pt"
    backbone.write_bytes(b"weights")
    calls = []

    def fake(backbone, data, cfg):
        calls.append(cfg.eval.knn_k)
        return {"val": {"knn": 0.5, "linear": 0.4}, "test": {"knn": 0.45, "linear": 0.35}, "knn_k": 5, "knn_t": 0.1}

    monkeypatch.setattr(E, "_evaluate", fake)
    return data, backbone, tmp_path / "evaluations", calls


def test_a_stored_evaluation_is_read_back_by_a_later_call(world):
    data, backbone, store, calls = world
    cfg = load_preset(preset_path("gpu"))
    first = E.evaluate(str(backbone), str(data), cfg, {}, store)
    assert E.evaluate(str(backbone), str(data), cfg, {}, store) == first and len(calls) == 1
    assert len(list(store.glob("*.json"))) == 1
    # when and how fast the data was prepared is not what it is
    (data / "manifest.json").write_text(json.dumps({**MANIFEST, "timing": {"total_s": 9.0}, "created": "now"}))
    E.evaluate(str(backbone), str(data), cfg, {}, store)
    assert len(calls) == 1


@pytest.mark.parametrize("change", ["settings", "backbone", "data", "backend"])
def test_what_changes_the_numbers_is_evaluated_again(world, change):
    data, backbone, store, calls = world
    cfg = load_preset(preset_path("gpu"))
    E.evaluate(str(backbone), str(data), cfg, {}, store)
    if change == "settings":
        cfg = load_preset(preset_path("gpu"), ["eval.knn_k=[7]"])
    elif change == "backbone":
        backbone.write_bytes(b"other weights")
    elif change == "data":
        (data / "manifest.json").write_text(json.dumps({**MANIFEST, "mean": [1.0, 2.0, 3.5]}))
    else:
        cfg = load_preset(preset_path("gpu"), ["eval.backend=ffcv"])
    E.evaluate(str(backbone), str(data), cfg, {}, store)
    assert len(calls) == 2 and len(list(store.glob("*.json"))) == 2


def test_without_a_store_nothing_is_written(world):
    data, backbone, store, calls = world
    E.evaluate(str(backbone), str(data), load_preset(preset_path("gpu")), {}, None)
    assert len(calls) == 1 and not store.exists()


def test_the_evaluation_backend_is_checked_with_the_preset():
    from fasthpt.errors import UserError

    with pytest.raises(UserError, match="eval.backend must be empty .* got 'jax'"):
        load_preset(preset_path("gpu"), ["eval.backend=jax"])
