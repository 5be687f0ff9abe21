"""`fasthpt bench plot` never reports success with an input it could not use."""

from __future__ import annotations

import json

import pytest

from fasthpt.cli import main

LOADER_ROW = {"backend": "torch", "res": 64, "device": "cpu", "samples_per_s": 10.0}
TRAIN_ROW = {"backend": "ffcv", "algorithms": ["none"], "res": 64, "samples_per_s": 100.0}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def plot(capsys, tmp_path, loaders, train):
    code = main(["bench", "plot", "--loaders", str(loaders), "--train", str(train), "--out", str(tmp_path / "out")])
    return code, capsys.readouterr()


def assert_refused(code, captured, *words):
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "wrote" not in captured.out
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("which", ["loaders", "train"])
def test_missing_input_is_an_error_even_when_the_other_plots(capsys, tmp_path, which):
    inputs = {"loaders": _write(tmp_path / "l.jsonl", [LOADER_ROW]), "train": _write(tmp_path / "t.jsonl", [TRAIN_ROW])}
    inputs[which] = tmp_path / "missing.jsonl"
    code, captured = plot(capsys, tmp_path, inputs["loaders"], inputs["train"])
    assert_refused(code, captured, f"--{which} {tmp_path / 'missing.jsonl'}: no such file", f"--{which} none")
    assert not (tmp_path / "out").exists()


def test_unreadable_and_empty_inputs_are_errors(capsys, tmp_path):
    train = _write(tmp_path / "t.jsonl", [TRAIN_ROW])
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81")
    code, captured = plot(capsys, tmp_path, tmp_path / "binary.jsonl", train)
    assert_refused(code, captured, f"--loaders {tmp_path / 'binary.jsonl'} cannot be read")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    code, captured = plot(capsys, tmp_path, tmp_path / "empty.jsonl", train)
    assert_refused(code, captured, f"--loaders {tmp_path / 'empty.jsonl'} is empty")
    loaders = _write(tmp_path / "l.jsonl", [LOADER_ROW])
    code, captured = plot(capsys, tmp_path, loaders, loaders)  # loader rows given as training rows
    assert_refused(code, captured, f"{loaders}:1 is not a train benchmark row (no 'algorithms')")


def test_none_skips_one_chart(capsys, tmp_path):
    code, captured = plot(capsys, tmp_path, _write(tmp_path / "l.jsonl", [LOADER_ROW]), "none")
    assert code == 0 and captured.out.strip() == f"wrote {tmp_path / 'out' / 'loaders.png'}"
    assert not (tmp_path / "out" / "train.png").exists()
