"""The formats users hold and the inputs a command needs: safetensors read natively wherever a
checkpoint is read (whatever the file is called, with a prefix, in half precision) and written by
`export --to safetensors`; a run folder is a backbone for every command; a bare checkpoint is asked,
in one line, for all the target format uses and for nothing else; a checkpoint missing a whole
stage is refused (or, with --allow-missing, exported with the list in its record); a run
remembers its data, so an export run from another folder uses what the run trained with; an
unwritable --out is refused before any work."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from export_helpers import RES, assert_one_line, perturbed, run_cli, write_run

from fasthpt.errors import UserError
from fasthpt.export import export
from fasthpt.models.backbones import backbone_state, build_backbone, load_backbone

MEAN, STD = "120,110,100", "60,50,40"


def _features(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _safetensors(path, state):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("name, prefix, dtype", [
    ("model.safetensors", "", torch.float32),
    ("model.safetensors", "model.", torch.float32),  # the Hugging Face hub's layout (timm's keys under model.)
    ("weights.bin", "", torch.float32),  # told by its header, not its name
    ("half.safetensors", "backbone.", torch.float16),
])
def test_safetensors_is_read_natively_as_a_base(tmp_path, name, prefix, dtype):
    torch.manual_seed(0)
    ref = build_backbone("resnet_tiny").eval()
    state = {prefix + k: (v.to(dtype) if v.is_floating_point() else v) for k, v in backbone_state(ref).items()}
    path = _safetensors(tmp_path / name, state)
    model, report = load_backbone(str(path))  # no --trust-checkpoint: the format runs no code
    assert report.format == "safetensors" and report.arch == "resnet_tiny" and not report.missing
    x = torch.rand(2, 3, 32, 32)
    tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(_features(model, x), _features(ref, x), **tol)


def test_safetensors_is_read_by_eval_embed_and_export(tmp_path, capsys, tiny_data, r18):
    path = _safetensors(tmp_path / "r18.safetensors", backbone_state(r18[0]))
    code, out, err = run_cli(capsys, "eval", "knn", "--backbone", path, "--data", tiny_data, "--res", RES, "--k", 3,
                             "--backend", "torch", "--workers", 0, "--no-progress", "--no-cache")
    assert code == 0 and out.startswith("knn: top1="), err
    code, out, err = run_cli(capsys, "embed", "--backbone", path, "--data", tiny_data, "--res", RES, "--out",
                             tmp_path / "f.npy", "--backend", "torch", "--workers", 0, "--no-progress")
    assert code == 0, err
    record = export(str(path), "torchscript", tmp_path / "r18.pt", mean=MEAN, std=STD)
    assert record["arch"] == "resnet18" and record["res"] is None  # torchscript runs any size: not asked


@pytest.mark.parametrize("damage", ["truncated", "garbage_header", "pickle_named_safetensors"])
def test_a_damaged_safetensors_file_is_one_line(tmp_path, capsys, damage):
    path = _safetensors(tmp_path / "m.safetensors", backbone_state(build_backbone("resnet_tiny")))
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage_header":
        path.write_bytes(data[:8] + b"{not json" + data[17:])
    else:
        torch.save({"x": torch.zeros(1)}, path)
    code, _, err = run_cli(capsys, "export", path, "--to", "torchvision", "--out", tmp_path / "x.pth")
    assert_one_line(code, err, str(path))
    assert "Traceback" not in err and not (tmp_path / "x.pth").exists()


def test_export_to_safetensors_loads_strict_into_torchvision_and_carries_its_record(run_dir, r18, tmp_path):
    import torchvision
    from safetensors import safe_open
    from safetensors.torch import load_file

    record = export(str(run_dir), "safetensors", tmp_path / "r18.safetensors")
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(load_file(str(tmp_path / "r18.safetensors")), strict=True)
    x = torch.rand(2, 3, RES, RES)
    torch.testing.assert_close(_features(model, x), _features(r18[0], x), rtol=0, atol=0)
    with safe_open(str(tmp_path / "r18.safetensors"), "pt") as fh:
        meta = json.loads(fh.metadata()["fasthpt"])
    assert meta["backbone_sha256"] == record["backbone_sha256"] and meta["format"] == "safetensors"
    assert json.loads((tmp_path / "r18.json").read_text())["file"] == "r18.safetensors"
    # and back in: the export is itself a backbone every command reads
    again = export(str(tmp_path / "r18.safetensors"), "torchvision", tmp_path / "again.pth")
    assert again["arch"] == "resnet18"


def test_safetensors_export_takes_any_arch_and_goes_beside_the_backbone(tiny_backbone, tmp_path):
    src = shutil.copy(tiny_backbone, tmp_path / "backbone.pt")
    record = export(str(src), "safetensors")
    assert record["path"] == str(tmp_path / "backbone.safetensors") and record["arch"] == "resnet_tiny"
    model, _ = load_backbone(record["path"])
    ref, _ = load_backbone(str(src))
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(_features(model, x), _features(ref, x))


def test_eval_takes_the_run_folder_that_export_and_embed_take(run_dir, tiny_data, capsys):
    argv = ["--data", tiny_data, "--res", RES, "--k", 3, "--backend", "torch", "--workers", 0, "--no-progress",
            "--no-cache"]
    code, by_folder, err = run_cli(capsys, "eval", "knn", "--backbone", run_dir, *argv)
    assert code == 0, err
    code, by_file, _ = run_cli(capsys, "eval", "knn", "--backbone", run_dir / "backbone.pt", *argv)
    assert by_folder.split(" seed=")[0] == by_file.split(" seed=")[0]
    assert f"backbone={run_dir / 'backbone.pt'}" in by_folder


@pytest.mark.parametrize("to, asked", [
    ("timm", ("--res N", "--norm-data DIR")),  # its pretrained_cfg holds both: named at once
    ("onnx", ("--norm-data DIR",)),  # folded in; any input size runs
    ("torchscript", ("--norm-data DIR",)),
])
def test_a_bare_checkpoint_is_asked_at_once_for_what_the_format_uses(r18, tmp_path, capsys, to, asked):
    out = tmp_path / ("x.onnx" if to == "onnx" else "x.pt")
    code, _, err = run_cli(capsys, "export", r18[1], "--to", to, "--out", out)
    assert_one_line(code, err, "a bare checkpoint does not say", *asked)
    assert ("--res" in err) == ("--res N" in asked)


@pytest.mark.parametrize("to", ["torchvision", "safetensors"])
def test_plain_weights_of_a_bare_checkpoint_need_neither(r18, tmp_path, to):
    out = tmp_path / ("x.pth" if to == "torchvision" else "x.safetensors")
    record = export(str(r18[1]), to, out)
    assert record["res"] is None and record["normalisation"] is None and out.is_file()


def test_embed_of_images_asks_for_resolution_and_normalisation_at_once(r18, tiny_folder, tmp_path, capsys):
    code, _, err = run_cli(capsys, "embed", "--backbone", r18[1], "--images", tiny_folder, "--out", tmp_path / "f.npy")
    assert_one_line(code, err, "--res N", "--norm-data DIR", "--mean R,G,B")
    code, _, err = run_cli(capsys, "embed", "--backbone", r18[1], "--images", tiny_folder, "--out", tmp_path / "f.npy",
                           "--mean", MEAN, "--std", STD)
    assert_one_line(code, err, "--res N")
    assert "--norm-data" not in err


def _without(tmp_path, prefix: str):
    torch.manual_seed(0)
    state = backbone_state(perturbed("resnet18"))
    return save_backbone_state({k: v for k, v in state.items() if not k.startswith(prefix)}, tmp_path / "part.pt")


def save_backbone_state(state, path):
    torch.save(state, path)
    return path


@pytest.mark.parametrize("prefix, said", [("layer4.", "all of layer4"), ("layer3.1.bn2.", "layer3.1.bn2.weight")])
def test_a_checkpoint_missing_tensors_is_refused_by_every_command(tmp_path, capsys, tiny_data, prefix, said):
    path = _without(tmp_path, prefix)
    code, _, err = run_cli(capsys, "export", path, "--to", "torchvision", "--out", tmp_path / "x.pth")
    assert_one_line(code, err, "lacks", said, "random init")
    code, _, err = run_cli(capsys, "eval", "knn", "--backbone", path, "--data", tiny_data, "--res", RES)
    assert_one_line(code, err, "lacks", said)
    code, _, err = run_cli(capsys, "embed", "--backbone", path, "--data", tiny_data, "--res", RES, "--out",
                           tmp_path / "f.npy")
    assert_one_line(code, err, "lacks", said)
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob("f.*"))


def test_allow_missing_exports_and_records_the_missing_tensors(tmp_path, capsys):
    path = _without(tmp_path, "layer4.")
    code, _, err = run_cli(capsys, "export", path, "--to", "torchvision", "--out", tmp_path / "x.pth",
                           "--allow-missing")
    assert code == 0 and "random init" in err
    record = json.loads((tmp_path / "x.json").read_text())
    assert record["missing_tensors"] and all(k.startswith("layer4.") for k in record["missing_tensors"])
    assert not any(k.endswith("num_batches_tracked") for k in record["missing_tensors"])


def test_old_checkpoints_without_batch_counters_are_complete(tmp_path):
    state = {k: v for k, v in backbone_state(perturbed("resnet18")).items() if not k.endswith("num_batches_tracked")}
    record = export(str(save_backbone_state(state, tmp_path / "old.pt")), "torchvision", tmp_path / "x.pth")
    assert record["missing_tensors"] == []


@pytest.fixture
def elsewhere(tmp_path, tiny_data, r18, monkeypatch):
    """A run trained on the relative data.path 'data/tiny' from folder A, exported from folder B where
    'data/tiny' is another dataset (other mean/std)."""
    from fasthpt.provenance import record_data

    a, b = tmp_path / "a", tmp_path / "b"
    for root, shift in ((a, 0.0), (b, 40.0)):
        shutil.copytree(tiny_data, root / "data" / "tiny", ignore=shutil.ignore_patterns(".cache"))
        manifest = root / "data" / "tiny" / "manifest.json"
        raw = json.loads(manifest.read_text())
        raw["mean"] = [m + shift for m in raw["mean"]]
        manifest.write_text(json.dumps(raw))
    monkeypatch.chdir(a)
    run = write_run(a / "runs" / "r", r18[1], "data/tiny")
    record_data(run, "data/tiny")  # what a run writes when it starts
    monkeypatch.chdir(b)
    return a, b, run


def test_an_export_from_another_folder_uses_the_data_the_run_trained_on(elsewhere, capsys):
    a, b, run = elsewhere
    trained = json.loads((a / "data" / "tiny" / "manifest.json").read_text())
    record = export(str(run), "onnx", b / "x.onnx")
    assert record["normalisation"]["mean"] == trained["mean"]
    assert str(a / "data" / "tiny") in record["normalisation"]["from"]
    assert record["run"]["data_record"]["path"] == "data/tiny" and "note:" not in capsys.readouterr().err


@pytest.mark.parametrize("change", ["gone", "changed"])
def test_an_export_says_when_the_runs_data_has_changed_or_gone(elsewhere, capsys, change):
    a, b, run = elsewhere
    trained = json.loads((a / "data" / "tiny" / "manifest.json").read_text())
    if change == "gone":
        shutil.rmtree(a / "data")
    else:
        (a / "data" / "tiny" / "manifest.json").write_text(json.dumps({**trained, "mean": [1.0, 2.0, 3.0]}))
    record = export(str(run), "onnx", b / "x.onnx")
    assert record["normalisation"]["mean"] == trained["mean"]  # what it trained with, recorded
    assert ("is gone" if change == "gone" else "has changed since") in capsys.readouterr().err
    assert ("folder is gone" if change == "gone" else "has changed since") in record["normalisation"]["from"]


def test_a_run_from_before_data_json_with_a_relative_path_is_refused_not_guessed(elsewhere, capsys):
    a, b, run = elsewhere
    (run / "data.json").unlink()
    code, _, err = run_cli(capsys, "export", run, "--to", "onnx", "--out", b / "x.onnx")
    assert_one_line(code, err, "data.path 'data/tiny' is relative", "--norm-data DIR")
    assert not (b / "x.onnx").exists()
    record = export(str(run), "onnx", b / "y.onnx", norm_data=str(a / "data" / "tiny"))
    assert record["normalisation"]["from"] == str(a / "data" / "tiny" / "manifest.json")


def _read_only(monkeypatch, folder):
    """What os.access says of a read-only mount or another user's folder (root ignores mode bits)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(folder)) else real(p, mode))


def _no_work(monkeypatch):
    import fasthpt.eval.features as features

    def extract(*args, **kwargs):
        raise AssertionError("features were computed before --out was checked")

    monkeypatch.setattr(features, "extract_features", extract)


@pytest.mark.parametrize("command", ["embed", "export"])
@pytest.mark.parametrize("where", ["read_only", "under_a_file", "read_only_parent_of_new_folder"])
def test_an_out_that_cannot_be_written_is_one_line_before_any_work(r18, tiny_data, tmp_path, capsys, monkeypatch,
                                                                    command, where):
    ro = tmp_path / "ro"
    ro.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    folder = {"read_only": ro, "under_a_file": blocker, "read_only_parent_of_new_folder": ro / "new"}[where]
    _read_only(monkeypatch, ro)
    _no_work(monkeypatch)
    if command == "embed":
        argv = ["embed", "--backbone", r18[1], "--data", tiny_data, "--res", RES, "--out", folder / "f.npy"]
    else:
        argv = ["export", r18[1], "--to", "onnx", "--mean", MEAN, "--std", STD, "--out", folder / "f.onnx"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line(code, err, "--out", "its folder")
    assert list(ro.iterdir()) == [] and blocker.read_text() == "x"


@pytest.mark.parametrize("command", ["embed", "export"])
def test_a_write_that_fails_at_the_end_is_one_line_and_leaves_nothing(r18, tiny_data, tmp_path, capsys, monkeypatch,
                                                                       command):
    import fasthpt.provenance as pv

    real = pv.atomic_path

    def full_disk(path):
        if str(path).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(pv, "atomic_path", full_disk)
    if command == "embed":
        argv = ["embed", "--backbone", r18[1], "--data", tiny_data, "--res", RES, "--out", tmp_path / "f.npy",
                "--backend", "torch", "--workers", 0, "--no-progress"]
    else:
        argv = ["export", r18[1], "--to", "torchvision", "--out", tmp_path / "f.pth"]
    code, _, err = run_cli(capsys, *argv)
    last = err.splitlines()[-1]  # after export's progress line
    assert code == 2 and "Traceback" not in err and last.startswith(f"fasthpt {command}: error: cannot write --out")
    assert "No space left on device" in last and [p.name for p in tmp_path.iterdir()] == []


def test_help_names_safetensors_among_the_formats_read_and_written(capsys):
    from fasthpt.cli import main

    for argv in (["export", "--help"], ["embed", "--help"], ["eval", "knn", "--help"], ["--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "safetensors" in capsys.readouterr().out, argv


def test_user_error_is_raised_for_a_missing_safetensors_package(tmp_path, monkeypatch):
    import builtins

    path = _safetensors(tmp_path / "m.safetensors", backbone_state(build_backbone("resnet_tiny")))
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    with pytest.raises(UserError, match="pip install safetensors"):
        load_backbone(str(path))


def test_a_run_folder_is_a_base_for_pretraining_too(run_dir, r18, tmp_path):
    model, report = load_backbone(str(run_dir), "resnet18")
    x = torch.rand(1, 3, RES, RES)
    assert report.source == str(run_dir / "backbone.pt") and torch.equal(_features(model, x), _features(r18[0], x))
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("name: x\n")
    with pytest.raises(UserError, match="has no backbone.pt .the run has not finished"):
        load_backbone(str(tmp_path / "unfinished"), "resnet18")
