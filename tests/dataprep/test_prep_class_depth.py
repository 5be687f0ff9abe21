"""Nested class folders (medical layouts: CLASS/PATIENT/*.png): prep says what it took as a class and
offers --class-depth, which takes the first N folder levels below the shared root as the class, the
same for folders, zips and tars."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from dataprep import prepare
from fasthpt.errors import UserError

FAST = dict(val_frac=0.0, test_frac=0.0, formats=("wds",), workers=1, progress=False, max_res=16)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def nested(levels: int) -> dict[str, bytes]:
    """scans/<class>/<site>/.../<patient>/<i>.png with ``levels`` folders per image below scans/."""
    files, n = {}, 0
    for cls in ("benign", "tumor"):
        for patient in ("p1", "p2", "p3"):
            middle = ["site_a"] * (levels - 2)
            for i in range(2):
                files["/".join(["scans", cls, *middle, patient, f"{i}.png"])] = png(n)
                n += 1
    return files


def write(tmp_path, files: dict[str, bytes], kind: str):
    if kind == "folder":
        for name, data in files.items():
            (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "src" / name).write_bytes(data)
        return tmp_path / "src"
    path = tmp_path / f"src.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def classes(out) -> list[str]:
    return json.loads((out / "manifest.json").read_text())["classes"]


@pytest.mark.parametrize("kind", ["folder", "zip", "tar.gz"])
def test_patient_folders_are_said_to_be_classes_and_class_depth_takes_the_first_level(tmp_path, capsys, kind):
    src = write(tmp_path, nested(2), kind)
    out = prepare("a", out=tmp_path / "out", src=src, **FAST)
    assert classes(out) == [f"{c}/{p}" for c in ("benign", "tumor") for p in ("p1", "p2", "p3")]
    err = capsys.readouterr().err
    assert "image folders nest up to 2 levels: each folder path is a class (6 classes, e.g. 'benign/p1')" in err
    assert "--class-depth 1 takes the first level as the class instead (2 classes: benign, tumor)" in err
    out = prepare("b", out=tmp_path / "out", src=src, class_depth=1, **FAST)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["benign", "tumor"] and manifest["splits"]["train"]["per_class"] == [6, 6]
    assert manifest["settings"]["class_depth"] == 1 and "nest" not in capsys.readouterr().err


@pytest.mark.parametrize("depth, want", [
    (1, ["benign", "tumor"]),
    (2, ["benign/site_a", "tumor/site_a"]),
    (3, [f"{c}/site_a/{p}" for c in ("benign", "tumor") for p in ("p1", "p2", "p3")]),
    (9, [f"{c}/site_a/{p}" for c in ("benign", "tumor") for p in ("p1", "p2", "p3")]),
])
def test_deeper_nesting_takes_as_many_levels_as_asked(tmp_path, depth, want):
    out = prepare("d", out=tmp_path / "out", src=write(tmp_path, nested(3), "folder"), class_depth=depth, **FAST)
    assert classes(out) == want


def test_flat_class_folders_get_no_note_and_mixed_depths_group_by_the_first_levels(tmp_path, capsys):
    files = {"a/0.png": png(0), "a/1.png": png(1), "b/x/0.png": png(2), "b/y/0.png": png(3)}
    out = prepare("m", out=tmp_path / "out", src=write(tmp_path, files, "folder"), **FAST)
    assert classes(out) == ["a", "b/x", "b/y"] and "nest up to 2 levels" in capsys.readouterr().err
    out = prepare("n", out=tmp_path / "out", src=write(tmp_path / "n", files, "folder"), class_depth=1, **FAST)
    assert classes(out) == ["a", "b"]
    flat = {"a/0.png": png(0), "b/0.png": png(1)}
    prepare("f", out=tmp_path / "out", src=write(tmp_path / "f", flat, "folder"), **FAST)
    assert "nest" not in capsys.readouterr().err


def test_another_class_depth_is_another_dataset_not_a_no_op(tmp_path):
    src = write(tmp_path, nested(2), "folder")
    prepare("a", out=tmp_path / "out", src=src, **FAST)
    with pytest.raises(UserError, match="prepared differently .*class_depth None -> 1"):
        prepare("a", out=tmp_path / "out", src=src, class_depth=1, **FAST)
    rebuilt = prepare("a", out=tmp_path / "out", src=src, class_depth=1, force=True, **FAST)
    assert classes(rebuilt) == ["benign", "tumor"]


@pytest.mark.parametrize("depth", [0, -1, True, 1.5])
def test_a_class_depth_that_is_not_a_positive_integer_is_refused(tmp_path, depth):
    with pytest.raises(UserError, match="--class-depth .*must be >= 1"):
        prepare("a", out=tmp_path / "out", src=write(tmp_path, nested(2), "folder"), class_depth=depth, **FAST)


def test_class_depth_is_for_src_only(tmp_path):
    with pytest.raises(UserError, match="--class-depth applies to --src"):
        prepare("sat", out=tmp_path / "out", class_depth=1, num_images=8, **FAST)


def test_the_cli_flag_reaches_prep(tmp_path, capsys):
    from fasthpt.cli import main

    src = write(tmp_path, nested(2), "folder")
    code = main(["prep", "--dataset", "c", "--src", str(src), "--out", str(tmp_path / "out"), "--class-depth", "1",
                 "--val-frac", "0", "--test-frac", "0", "--formats", "wds", "--workers", "1", "--no-progress"])
    assert code == 0 and classes(tmp_path / "out" / "c") == ["benign", "tumor"]
