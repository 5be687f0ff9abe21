"""fasthpt.fileio: whole files appear in one rename or not at all; result lines are appended whole."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fasthpt import fileio


def test_atomic_writes_create_folders_and_leave_no_temporary_file(tmp_path):
    fileio.atomic_write_text(tmp_path / "a" / "x.txt", "héllo\n")
    fileio.atomic_write_json(tmp_path / "a" / "x.json", {"path": tmp_path, "n": 1})
    fileio.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "a" / "x.pt")
    assert (tmp_path / "a" / "x.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"path": str(tmp_path), "n": 1}
    assert torch.equal(torch.load(tmp_path / "a" / "x.pt", weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "x.pt", "x.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "out.bin"
    fileio.atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="cut short"), fileio.atomic_path(path) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("cut short")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_append_jsonl_writes_whole_lines_and_ends_a_torn_one_first(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    fileio.append_jsonl(path, {"a": 1}, {"b": 2})
    with open(path, "a") as fh:
        fh.write('{"c": ')  # a writer killed mid-line
    fileio.append_jsonl(path, {"d": 4})
    assert path.read_text().splitlines() == ['{"a": 1}', '{"b": 2}', '{"c": ', '{"d": 4}']


def test_run_metadata_names_commit_host_time_and_versions():
    meta = fileio.run_metadata()
    assert set(meta) == {"git_sha", "host", "host_cpus", "python", "torch", "fasthpt", "time"}
    assert meta["git_sha"] and meta["host_cpus"] == os.cpu_count() and meta["time"].endswith("+00:00")
    assert meta["torch"].split("+")[0] == torch.__version__.split("+")[0]


def test_printed_results_are_strict_json():
    """A figure not measured (NaN) prints as null: `NaN` is not JSON and strict readers refuse it."""
    text = fileio.printable_json({"data_stall_frac": float("nan"), "runs": [1.5, float("inf")], "n": 3}, indent=1)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "data_stall_frac": None, "runs": [1.5, None], "n": 3}
