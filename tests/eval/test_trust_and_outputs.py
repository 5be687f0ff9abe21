"""`fasthpt eval`: a code-running --backbone is refused, outputs are checked before any work, an
oversized --k is lowered with a notice and recorded, the architecture hint names --arch."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fasthpt.cli import main
from fasthpt.models.backbones import build_backbone, save_backbone

FAST = ["--res", "32", "--backend", "torch", "--workers", "0", "--no-progress"]


class RunsShell:
    """Unpickling this runs a shell command (what a hostile downloaded checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def run_eval(capsys, *argv):
    code = main(["eval", *argv])
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


def assert_refused(code, err, *words):
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def knn_args(data, tmp_path, backbone="random", *extra):
    return ["knn", "--backbone", backbone, "--arch", "resnet_tiny", "--data", str(data), *FAST,
            "--cache-dir", str(tmp_path / "cache"), *extra]


def test_knn_cli_refuses_a_code_running_backbone(capsys, tiny_data, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": build_backbone("resnet_tiny").state_dict(), "x": RunsShell(marker)}, evil)
    code, _, err = run_eval(capsys, *knn_args(tiny_data, tmp_path, str(evil)))
    assert_refused(code, err, str(evil), "refused", "system", "--trust-checkpoint")
    assert not marker.exists() and not (tmp_path / "cache").exists()


def test_wrong_architecture_hint_names_the_flag(capsys, tiny_data, tmp_path):
    path = save_backbone(build_backbone("resnet_tiny"), tmp_path / "backbone.pt")
    code, _, err = run_eval(capsys, "knn", "--backbone", str(path), "--arch", "resnet18", "--data", str(tiny_data))
    assert_refused(code, err, "but --arch is resnet18", "set --arch resnet_tiny")
    assert "model.arch" not in err


@pytest.mark.parametrize("protocol", ["knn", "linear", "finetune"])
def test_json_that_is_a_folder_is_refused_before_any_work(capsys, tiny_data, tmp_path, protocol):
    folder = tmp_path / "results"
    folder.mkdir()
    argv = [protocol, "--backbone", "random", "--arch", "resnet_tiny", "--data", str(tiny_data), *FAST,
            "--json", str(folder)]
    if protocol != "finetune":
        argv += ["--cache-dir", str(tmp_path / "cache")]
    code, out, err = run_eval(capsys, *argv)
    assert_refused(code, err, f"--json {folder} is a folder")
    assert out == "" and not (tmp_path / "cache").exists() and list(folder.iterdir()) == []


def test_json_and_cache_dir_in_places_that_cannot_be_written(capsys, tiny_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run_eval(capsys, *knn_args(tiny_data, tmp_path, "random", "--json", str(blocker / "r.jsonl")))
    assert_refused(code, err, f"--json {blocker / 'r.jsonl'} cannot be created", "not a writable folder")
    code, _, err = run_eval(capsys, "knn", "--backbone", "random", "--arch", "resnet_tiny", "--data", str(tiny_data),
                            *FAST, "--cache-dir", str(blocker))
    assert_refused(code, err, f"--cache-dir {blocker} is a file")
    code, _, err = run_eval(capsys, "linear", "--backbone", "random", "--arch", "resnet_tiny", "--data",
                            str(tiny_data), *FAST, "--cache-dir", str(blocker / "cache"))
    assert_refused(code, err, f"--cache-dir {blocker / 'cache'} cannot be created")
    assert not (tmp_path / "cache").exists()


def test_read_only_cache_dir_and_json_are_refused(capsys, tiny_data, tmp_path, monkeypatch):
    """Permission bits do not stop root, so the read-only case (a read-only mount, a folder of
    another user) is what os.access reports for these paths."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "r.jsonl").write_text("")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(ro)) else real_access(p, mode))
    code, _, err = run_eval(capsys, "knn", "--backbone", "random", "--arch", "resnet_tiny", "--data", str(tiny_data),
                            *FAST, "--cache-dir", str(ro))
    assert_refused(code, err, f"--cache-dir {ro} is not writable")
    code, _, err = run_eval(capsys, *knn_args(tiny_data, tmp_path, "random", "--json", str(ro / "r.jsonl")))
    assert_refused(code, err, f"--json {ro / 'r.jsonl'} is not writable")
    code, _, err = run_eval(capsys, *knn_args(tiny_data, tmp_path, "random", "--json", str(ro / "new" / "r.jsonl")))
    assert_refused(code, err, f"cannot be created: {ro} is not a writable folder")


def test_k_above_the_train_split_is_lowered_with_a_notice_and_recorded(capsys, tiny_data, tmp_path):
    from fasthpt.manifest import load_manifest

    n_train = load_manifest(tiny_data).count("train")
    out = tmp_path / "r.jsonl"
    code, printed, err = run_eval(capsys, *knn_args(tiny_data, tmp_path, "random", "--k", "1000", "--json", str(out)))
    assert code == 0 and printed.startswith("knn: top1=")
    assert f"--k 1000 is more than the {n_train} train images; using k={n_train}" in err
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["options"]["k"] == [n_train] and record["options"]["k_requested"] == [1000]
    assert record["k"] == n_train and record["notices"] == [f"--k 1000 is more than the {n_train} train images; "
                                                            f"using k={n_train}"]
    # the same numbers as asking for that k directly (features now come from the cache)
    code, _, err = run_eval(capsys, *knn_args(tiny_data, tmp_path, "random", "--k", str(n_train), "--json", str(out)))
    again = json.loads(out.read_text().splitlines()[-1])
    assert code == 0 and "note:" not in err and again["features_cached"]
    assert again["top1"] == record["top1"] and again["options"]["k_requested"] == [n_train]


def test_a_cache_that_cannot_be_written_does_not_cost_the_result(tiny_data, tmp_path, monkeypatch, caplog):
    """The default cache folder is not checked up front (it falls back to ~/.cache); a failure to
    write it, found only after extraction, is a warning and the result still comes back."""
    from fasthpt.eval import common
    from fasthpt.eval.knn import run_knn

    def disk_full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(common, "atomic_torch_save", disk_full)
    out = tmp_path / "r.jsonl"
    result = run_knn("random", str(tiny_data), arch="resnet_tiny", k=5, res=32, backend="torch", workers=0,
                     cache_dir=tmp_path / "cache", json_path=out, progress=False, quiet=True)
    assert 0.0 <= result["top1"] <= 1.0 and json.loads(out.read_text())["top1"] == result["top1"]
    assert any("feature cache not written" in r.getMessage() for r in caplog.records)
