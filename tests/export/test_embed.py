"""`fasthpt embed`: features equal the backbone's on the same preprocessed tensors, every usable
image is there with its path and label, unusable ones are listed, outputs are atomic."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from export_helpers import RES, assert_one_line, normalise, run_cli
from PIL import Image

from fasthpt.embed import embed
from fasthpt.errors import UserError

MEAN, STD = [120.0, 110.0, 100.0], [60.0, 50.0, 40.0]
NORM = dict(mean=",".join(map(str, MEAN)), std=",".join(map(str, STD)))


def eval_tensor(path, res: int = RES) -> torch.Tensor:
    """The eval transform written with torchvision's transforms: resize the shorter side to
    round(res * 256 / 224), center-crop res, uint8 CHW."""
    import torchvision.transforms as T

    transform = T.Compose([T.Resize(round(res * 256 / 224), interpolation=T.InterpolationMode.BILINEAR,
                                    antialias=True), T.CenterCrop(res), T.PILToTensor()])
    return transform(Image.open(path).convert("RGB"))


@pytest.fixture
def folder(tiny_folder, tmp_path):
    """Two class folders of the tiny tree, a loose image beside them, a broken JPEG and a text file."""
    root = tmp_path / "imgs"
    for name in ("blue_checks", "red_stripes"):
        (root / name).mkdir(parents=True)
        for src in sorted((tiny_folder / name).iterdir())[:3]:
            shutil.copy(src, root / name / src.name)
    shutil.copy(tiny_folder / "green_rings" / "001.png", root / "loose.png")
    (root / "red_stripes" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "notes.txt").write_text("not an image")
    return root


def test_images_features_equal_the_backbone_on_the_same_tensors(r18, folder, tmp_path, capsys):
    code, out, err = run_cli(capsys, "embed", "--backbone", r18[1], "--images", folder, "--out", tmp_path / "f.npy",
                             "--res", RES, "--mean", NORM["mean"], "--std", NORM["std"], "--workers", 0,
                             "--batch-size", 3, "--no-progress")
    assert code == 0 and "7 x 512" in out
    assert "skipped 2" in err and "red_stripes/broken.jpg" in err and "notes.txt" in err
    features = np.load(tmp_path / "f.npy")
    record = json.loads((tmp_path / "f.json").read_text())
    assert features.dtype == np.float32 and features.shape == (7, 512) and record["count"] == 7
    assert record["paths"][:4] == ["blue_checks/000.jpg", "blue_checks/001.png", "blue_checks/002.jpg", "loose.png"]
    assert record["labels"] == [0, 0, 0, -1, 1, 1, 1] and record["classes"] == ["blue_checks", "red_stripes"]
    assert {s["path"] for s in record["skipped"]} == {"red_stripes/broken.jpg", "notes.txt"}
    x = torch.stack([eval_tensor(folder / p) for p in record["paths"]])
    with torch.no_grad():
        expected = r18[0](normalise(x, MEAN, STD))
    torch.testing.assert_close(torch.from_numpy(features), expected, atol=1e-5, rtol=1e-5)


def test_flat_folder_is_unlabelled_and_l2_is_on_request(r18, tiny_folder, tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i, src in enumerate(sorted((tiny_folder / "yellow_dots").iterdir())[:3]):
        shutil.copy(src, root / f"img{i}{src.suffix}")
    record = embed(str(r18[1]), tmp_path / "f.npy", images=str(root), res=RES, l2=True, workers=0, progress=False,
                   **NORM)
    features = np.load(tmp_path / "f.npy")
    assert record["labels"] == [-1, -1, -1] and record["classes"] == [] and record["l2_normalised"] is True
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


def test_data_features_equal_the_backbone_on_the_eval_loader(run_dir, r18, tiny_data, tmp_path):
    from fasthpt.eval.common import eval_loader, resolve_data

    record = embed(str(run_dir), tmp_path / "d.npy", data=str(tiny_data), backend="torch", workers=0,
                   progress=False)  # resolution from the run's config
    features = torch.from_numpy(np.load(tmp_path / "d.npy"))
    ds = resolve_data(tiny_data)
    expected, labels = [], []
    with torch.no_grad():
        for split in ("train", "val", "test"):
            for x, y in eval_loader(ds, split, RES, 64, 0, torch.device("cpu"), "torch"):
                expected.append(r18[0](x))
                labels += y.tolist()
    torch.testing.assert_close(features, torch.cat(expected), atol=1e-5, rtol=1e-5)
    assert record["labels"] == labels and record["splits"] == ["train"] * 36 + ["val"] * 12 + ["test"] * 12
    from dataprep.samples import read_samples

    assert record["paths"][36:48] == [path for path, _ in read_samples(tiny_data, "val")] and record["res"] == RES
    assert record["backbone"]["run"]["run"] == str(run_dir)


def test_run_folder_gives_normalisation_and_resolution_for_images(run_dir, folder, tmp_path):
    from fasthpt.manifest import load_manifest

    record = embed(str(run_dir), tmp_path / "f.npy", images=str(folder), workers=0, progress=False)
    manifest = load_manifest(record["backbone"]["run"]["data"])
    assert record["res"] == RES and record["normalisation"]["mean"] == manifest.mean


def test_parquet_round_trip(r18, folder, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is optional")
    embed(str(r18[1]), tmp_path / "f.parquet", images=str(folder), res=RES, workers=0, progress=False, **NORM)
    np_record = embed(str(r18[1]), tmp_path / "g.npy", images=str(folder), res=RES, workers=0, progress=False, **NORM)
    table = pq.read_table(tmp_path / "f.parquet")
    assert table.column("path").to_pylist() == np_record["paths"]
    assert table.column("label").to_pylist() == np_record["labels"]
    stored = np.array(table.column("feature").to_pylist(), np.float32)
    np.testing.assert_array_equal(stored, np.load(tmp_path / "g.npy"))
    assert json.loads(table.schema.metadata[b"fasthpt"])["count"] == 7


def test_parquet_without_pyarrow_is_one_line_before_any_work(r18, folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    code, _, err = run_cli(capsys, "embed", "--backbone", tmp_path / "absent.pt", "--images", folder,
                           "--out", tmp_path / "f.parquet")
    assert_one_line(code, err, "pip install pyarrow")


def test_bad_input_is_one_line(r18, tiny_backbone, folder, tiny_data, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"nope")
    base = ("--res", RES, "--mean", NORM["mean"], "--std", NORM["std"])
    cases = [
        (("--backbone", tmp_path / "nope.pt", "--images", folder, *base), ("not found",)),
        (("--backbone", tiny_backbone, "--arch", "resnet18", "--images", folder, *base), ("resnet_tiny", "resnet18")),
        (("--backbone", r18[1], "--images", empty, *base), ("no files found",)),
        (("--backbone", r18[1], "--images", only_bad, *base), ("no usable images", "x.jpg")),
        (("--backbone", r18[1], "--images", tmp_path / "missing", *base), ("not a folder",)),
        (("--backbone", r18[1], "--images", folder, "--res", RES), ("--norm-data",)),
        (("--backbone", r18[1], "--data", tiny_data, *base), ("own manifest",)),
        (("--backbone", r18[1], "--data", tiny_data, "--res", RES, "--splits", "nope"), ("no split 'nope'",)),
    ]
    for argv, words in cases:
        code, _, err = run_cli(capsys, "embed", *argv, "--out", tmp_path / "f.npy", "--workers", 0, "--no-progress")
        assert_one_line(code, err, *words)
    code, _, err = run_cli(capsys, "embed", "--backbone", r18[1], "--images", folder, *base,
                           "--out", tmp_path / "f.txt")
    assert_one_line(code, err, ".npy", ".parquet")
    assert not list(tmp_path.glob("f.*")) and not list(tmp_path.glob(".f.*"))


def test_existing_output_needs_force(r18, folder, tmp_path):
    opts = dict(images=str(folder), res=RES, workers=0, progress=False, **NORM)
    embed(str(r18[1]), tmp_path / "f.npy", **opts)
    with pytest.raises(UserError, match="exists; pass --force"):
        embed(str(r18[1]), tmp_path / "f.npy", **opts)
    assert embed(str(r18[1]), tmp_path / "f.npy", force=True, l2=True, **opts)["l2_normalised"] is True


def test_help(capsys):
    from fasthpt.cli import main

    for name in ("export", "embed"):
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0 and f"fasthpt {name}" in capsys.readouterr().out


def test_trust_checkpoint_is_passed_on(r18, folder, tmp_path):
    from export_helpers import Note

    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": r18[0].state_dict(), "note": Note()}, path)
    opts = dict(images=str(folder), res=RES, workers=0, progress=False, **NORM)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        embed(str(path), tmp_path / "f.npy", **opts)
    assert embed(str(path), tmp_path / "f.npy", trust=True, **opts)["count"] == 7
