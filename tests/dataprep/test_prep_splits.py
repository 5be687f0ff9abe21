"""Splits: three stratified, seeded splits from fractions, or the user's own lists (--splits DIR)."""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from tiny_images import write_tiny_folder

from dataprep import prepare
from dataprep.samples import read_samples
from dataprep.split import StreamingSplit
from fasthpt.cli import main
from fasthpt.errors import UserError
from fasthpt.manifest import SCHEMA_VERSION, load_manifest

FAST = dict(formats=("wds",), workers=1, progress=False)
SPLITS = ("train", "val", "test")


def half_up(x: float) -> int:
    return int(x + 0.5)  # x >= 0 here


def split_of(out: Path) -> dict[str, str]:
    """{source path: split} over every split the prepared folder holds."""
    m = load_manifest(out)
    return {path: s for s in SPLITS if s in m.raw["splits"] for path, _ in read_samples(out, s)}


def one_line_error(capsys, *argv) -> str:
    assert main(["prep", *map(str, argv), "--formats", "wds", "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fasthpt prep: error:"), err
    return err


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """4 classes of 7, 10, 13 and 15 usable images, plus one corrupt file (skipped, not counted)."""
    root = write_tiny_folder(tmp_path_factory.mktemp("uneven"), per_class=15, size=16)
    usable = {}
    for name, keep in zip(sorted(p.name for p in root.iterdir()), (7, 10, 13, 15)):
        files = sorted((root / name).iterdir())
        for f in files[keep:]:
            f.unlink()
        usable[name] = keep
    (root / "green_rings" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root, usable


# ---------------------------------------------------------------- the streaming three-way split

@pytest.mark.parametrize("val_frac, test_frac", [(0.2, 0.2), (0.1, 0.1), (0.25, 0.25), (0.3, 0.6),
                                                 (0.45, 0.45), (0.5, 0.0), (0.0, 0.3), (0.15, 0.05)])
def test_streaming_split_is_exact_after_every_sample(val_frac, test_frac):
    """Each class, after its k-th sample, holds round(k * frac) val and test samples (half up),
    whatever the interleaving of classes, and every sample is released exactly once."""
    split = StreamingSplit(val_frac, test_frac, 3)
    seen, got = Counter(), {s: Counter() for s in SPLITS}
    released = []
    for step in range(120):
        label = (step * 7 + step // 5) % 3  # an uneven interleaving
        seen[label] += 1
        for s, item in split.assign(f"k{step}", label, (step, label)):
            got[s][item[1]] += 1
            released.append(item[0])
        for c in range(3):
            assert got["val"][c] == half_up(seen[c] * val_frac), (step, c)
            assert got["test"][c] == half_up(seen[c] * test_frac), (step, c)
    for s, item in split.flush():
        assert s == "train"
        released.append(item[0])
    assert sorted(released) == list(range(120))


def test_val_is_the_two_way_splits_val():
    """Adding a test fraction moves train samples only: val stays the set a two-way split picks."""
    three, two = StreamingSplit(0.2, 0.2, 2), StreamingSplit(0.2, 0.0, 2)
    val3, val2 = set(), set()
    for i in range(50):
        val3 |= {item for s, item in three.assign("", i % 2, i) if s == "val"}
        val2 |= {item for s, item in two.assign("", i % 2, i) if s == "val"}
    assert val3 == val2 and len(val2) == 10


# ---------------------------------------------------------------- fractions, end to end

def test_three_disjoint_stratified_splits_cover_the_data(uneven, tmp_path, capsys):
    root, usable = uneven
    out = prepare("u", out=tmp_path, src=root, **FAST)
    m = load_manifest(out)
    assert set(m.raw["splits"]) == set(SPLITS)
    samples = {s: read_samples(out, s) for s in SPLITS}
    paths = [p for s in SPLITS for p, _ in samples[s]]
    assert len(paths) == len(set(paths))  # disjoint
    files = {f"{c}/{f.name}" for c in usable for f in (root / c).iterdir()}
    assert set(paths) == files - {"green_rings/broken.jpg"}  # covered, less the skipped file
    for c, name in enumerate(m.classes):
        n = usable[name]
        want = {"val": half_up(n * 0.2), "test": half_up(n * 0.2)}
        want["train"] = n - want["val"] - want["test"]
        for s in SPLITS:
            assert m.raw["splits"][s]["per_class"][c] == want[s], (name, s)
            assert sum(label == c for _, label in samples[s]) == want[s], (name, s)
    assert m.raw["settings"]["test_frac"] == 0.2 and m.raw["settings"]["split_source"] == "fractions"
    assert m.raw["schema"] == SCHEMA_VERSION
    assert "27 train / 9 val / 9 test images" in capsys.readouterr().err  # (7, 10, 13, 15) per class


def test_same_seed_same_splits_other_seed_other_members(uneven, tmp_path):
    root, _ = uneven
    a = prepare("a", out=tmp_path, src=root, seed=3, **FAST)
    b = prepare("b", out=tmp_path, src=root, seed=3, **FAST)
    c = prepare("c", out=tmp_path, src=root, seed=4, **FAST)
    for s in SPLITS:
        assert read_samples(a, s) == read_samples(b, s)
        assert (a / "wds" / f"{s}-000000.tar").read_bytes() == (b / "wds" / f"{s}-000000.tar").read_bytes()
    assert split_of(a) != split_of(c)
    assert load_manifest(a).raw["splits"] == load_manifest(c).raw["splits"]  # still stratified alike


def test_test_frac_zero_has_no_test_split_and_says_so(tmp_path):
    src = write_tiny_folder(tmp_path / "src", per_class=5, size=16)
    out = prepare("z", out=tmp_path / "out", src=src, test_frac=0.0, **FAST)
    m = load_manifest(out)
    assert set(m.raw["splits"]) == {"train", "val"} and m.count("val") == 4
    with pytest.raises(UserError) as err:
        m.count("test")
    assert str(err.value) == (f"{out} has no test split (prepared with --test-frac 0): re-run "
                              "`fasthpt prep --dataset z ... --test-frac 0.2 --force`")


def test_embedded_datasets_get_three_splits(tmp_path):
    out = prepare("sat", out=tmp_path, num_images=60, image_size=16, **FAST)
    m = load_manifest(out)
    assert set(m.raw["splits"]) == set(SPLITS)
    for c in range(m.num_classes):
        n = sum(m.raw["splits"][s]["per_class"][c] for s in SPLITS)
        assert [m.raw["splits"][s]["per_class"][c] for s in ("val", "test")] == [half_up(n * 0.2)] * 2


@pytest.mark.parametrize("argv, message", [
    (["--val-frac", "0.5", "--test-frac", "0.5"], "--val-frac 0.5 + --test-frac 0.5: must be below 1"),
    (["--test-frac", "-0.1"], "--test-frac -0.1: must be in [0, 1)"),
    (["--test-frac", "1"], "--test-frac 1.0: must be in [0, 1)"),
])
def test_bad_fractions_are_one_line(tmp_path, capsys, argv, message):
    src = write_tiny_folder(tmp_path / "src", per_class=2, size=16)
    assert message in one_line_error(capsys, "--dataset", "f", "--src", src, "--out", tmp_path / "o", *argv)


def test_a_different_split_setting_is_prepared_differently(tmp_path):
    src = write_tiny_folder(tmp_path / "src", per_class=5, size=16)
    prepare("d", out=tmp_path / "out", src=src, **FAST)
    with pytest.raises(UserError, match=r"prepared differently \(test_frac 0\.2 -> 0\.4\); use --force"):
        prepare("d", out=tmp_path / "out", src=src, test_frac=0.4, **FAST)
    lists = _write_lists(tmp_path / "lists", train=["blue_checks/000.jpg"], val=["green_rings/001.png"])
    with pytest.raises(UserError, match=r"val_frac 0\.2 -> None; test_frac 0\.2 -> None; "
                                        r"split_source 'fractions' -> lists\(train\.txt [0-9a-f]{12}, "):
        prepare("d", out=tmp_path / "out", src=src, splits=lists, **FAST)


# ---------------------------------------------------------------- the user's lists

def _write_lists(folder: Path, **lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("".join(f"{r}\n" for r in rows))
    return folder


def _source(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """The tiny tree (3 per class, and blue_checks/harbor22.jpg: a name no other class holds) as a
    folder, zip or tar, and the prefix prep lists its paths with."""
    folder = write_tiny_folder(tmp_path / "tree" / "wrap", per_class=3, size=16)
    shutil.copy(folder / "blue_checks" / "000.jpg", folder / "blue_checks" / "harbor22.jpg")
    if kind == "folder":
        return folder, ""
    path = tmp_path / f"src.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for f in sorted(folder.rglob("*.*")):
                zf.write(f, f.relative_to(folder.parent).as_posix())
    else:
        with tarfile.open(path, "w") as tf:
            tf.add(folder, arcname="wrap")
    return path, "wrap/"


@pytest.mark.parametrize("kind", ["folder", "zip", "tar"])
def test_user_lists_are_honoured_exactly(tmp_path, capsys, kind):
    src, prefix = _source(kind, tmp_path)
    # Every accepted spelling: the path as prep lists it, the path below the class root (OpenSelfSup's
    # meta files, with their label column), a unique file name alone (TensorFlow Datasets' lists),
    # "./", comments and blank lines.
    train = ["# the authors' split", f"{prefix}blue_checks/000.jpg", "blue_checks/001.png 0",
             f"./{prefix}green_rings/000.jpg", "", "red_stripes/002.jpg\t2", "yellow_dots/001.png  ",
             "harbor22.jpg"]
    val = ["green_rings/001.png", "red_stripes/000.jpg"]
    test = ["yellow_dots/000.jpg 3", "green_rings/002.jpg"]
    lists = _write_lists(tmp_path / "lists", train=train, val=val, test=test)
    out = prepare("l", out=tmp_path / "out", src=src, splits=lists, **FAST)
    named = {"train": ["blue_checks/000.jpg", "blue_checks/001.png", "green_rings/000.jpg",
                       "red_stripes/002.jpg", "yellow_dots/001.png", "blue_checks/harbor22.jpg"],
             "val": ["green_rings/001.png", "red_stripes/000.jpg"],
             "test": ["yellow_dots/000.jpg", "green_rings/002.jpg"]}
    want = {prefix + p: s for s, paths in named.items() for p in paths}
    assert split_of(out) == want
    m = load_manifest(out)
    assert {s: m.count(s) for s in SPLITS} == {"train": 6, "val": 2, "test": 2}
    for s in SPLITS:  # labels from the folders
        assert all(m.classes[label] == p.split("/")[-2] for p, label in read_samples(out, s))
    left_out = 13 - len(want)
    assert m.raw["excluded"]["count"] == left_out and sum(m.raw["excluded"]["per_class"]) == left_out
    assert set(m.raw["excluded"]["examples"]).isdisjoint(want)
    assert f"excluded {left_out} images that no --splits list names" in capsys.readouterr().err
    digests = m.raw["settings"]["split_source"]["sha256"]
    assert sorted(digests) == ["test.txt", "train.txt", "val.txt"] and m.raw["settings"]["val_frac"] is None


def test_lists_rerun_is_a_noop_and_an_edited_list_is_prepared_differently(tmp_path, capsys):
    src = write_tiny_folder(tmp_path / "src", per_class=3, size=16)
    lists = _write_lists(tmp_path / "lists", train=["blue_checks/000.jpg"], val=["blue_checks/001.png"])
    out = prepare("r", out=tmp_path / "out", src=src, splits=lists, **FAST)
    capsys.readouterr()
    moved = tmp_path / "moved"
    shutil.copytree(lists, moved)  # the folder's name does not matter, its contents do
    prepare("r", out=tmp_path / "out", src=src, splits=moved, **FAST)
    assert "already prepared" in capsys.readouterr().out
    (moved / "val.txt").write_text("blue_checks/002.jpg\n")
    with pytest.raises(UserError, match=r"split_source lists\(train\.txt \w{12}, val\.txt \w{12}\) -> "
                                        r"lists\(train\.txt \w{12}, val\.txt \w{12}\)"):
        prepare("r", out=tmp_path / "out", src=src, splits=moved, **FAST)
    with pytest.raises(UserError) as err:
        load_manifest(out).count("test")
    assert str(err.value) == (f"{out} has no test split (its --splits lists name no test image: "
                              "DIR/test.txt): re-run `fasthpt prep --dataset r ... --splits DIR --force`")


@pytest.fixture
def listed(tmp_path):
    src = write_tiny_folder(tmp_path / "src", per_class=3, size=16)
    return src, tmp_path / "lists", ["--dataset", "x", "--src", src, "--out", tmp_path / "out",
                                     "--splits", tmp_path / "lists"]


def test_unknown_paths_are_one_line_with_the_count_and_the_first_few(listed, capsys):
    src, lists, argv = listed
    _write_lists(lists, train=["blue_checks/000.jpg", "blue_checks/999.jpg", "nowhere/1.jpg"],
                 val=["green_rings/001.png", "green_rings/001.jpg", "x/y.png"])
    err = one_line_error(capsys, *argv)
    assert (f"--splits {lists}: 4 listed paths are not images in --src (e.g. train.txt:2 blue_checks/999.jpg; "
            "train.txt:3 nowhere/1.jpg; val.txt:2 green_rings/001.jpg); name them relative to --src or "
            "to its class folders") in err
    assert not (src.parent / "out" / "x").exists()


def test_an_image_in_two_lists_is_one_line(listed, capsys):
    _, lists, argv = listed
    # The same file, spelled as the path below the class root and as a path relative to --src.
    _write_lists(lists, train=["blue_checks/000.jpg", "red_stripes/000.jpg"],
                 val=["green_rings/001.png"], test=["./red_stripes/000.jpg 2"])
    err = one_line_error(capsys, *argv)
    assert ("1 images are listed more than once (e.g. red_stripes/000.jpg: train.txt:2 and test.txt:1); "
            "each image belongs to one split") in err


def test_a_name_that_fits_several_images_is_one_line(listed, capsys):
    _, lists, argv = listed
    _write_lists(lists, train=["000.jpg"], val=["green_rings/001.png"])
    err = one_line_error(capsys, *argv)
    assert ("1 listed paths name more than one image (e.g. train.txt:1 000.jpg: blue_checks/000.jpg, "
            "green_rings/000.jpg); give the class folder too") in err


@pytest.mark.parametrize("case, message", [
    ("no val.txt", "no val.txt (the folder needs train.txt and val.txt, and test.txt for a test split)"),
    ("empty train.txt", "train.txt lists no images"),
    ("with --val-frac", "--splits names every image's split itself: drop --val-frac/--test-frac"),
    ("a file as DIR", "not a folder"),
])
def test_bad_split_folders_are_one_line(listed, capsys, case, message):
    _, lists, argv = listed
    _write_lists(lists, train=["# nothing yet"] if case == "empty train.txt" else ["blue_checks/000.jpg"],
                 **({} if case == "no val.txt" else {"val": ["green_rings/001.png"]}))
    if case == "with --val-frac":
        argv = [*argv, "--val-frac", "0.2"]
    if case == "a file as DIR":
        argv = [*argv[:-1], lists / "train.txt"]
    assert message in one_line_error(capsys, *argv)


def test_splits_need_src(tmp_path, capsys):
    lists = _write_lists(tmp_path / "lists", train=["sat/0000001"], val=[])
    err = one_line_error(capsys, "--dataset", "sat", "--out", tmp_path / "o", "--splits", lists)
    assert "--splits needs --src" in err


def test_no_usable_train_image_is_one_line(listed, capsys):
    src, lists, argv = listed
    (src / "blue_checks" / "000.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    _write_lists(lists, train=["blue_checks/000.jpg"], val=["green_rings/001.png"])
    err = one_line_error(capsys, *argv)
    assert ("no usable train images (1 val / 0 test, 1 files skipped); lower --val-frac/--test-frac, "
            "or list more images in train.txt") in err


# ---------------------------------------------------------------- readers of older folders

def test_an_older_folder_without_test_says_to_rerun_prep(tmp_path):
    src = write_tiny_folder(tmp_path / "src", per_class=5, size=16)
    out = prepare("old", out=tmp_path / "out", src=src, test_frac=0.0, **FAST)
    raw = json.loads((out / "manifest.json").read_text())
    raw["schema"] = 2  # as written before the test split existed
    for key in ("test_frac", "split_source", "splits_dir"):
        raw["settings"].pop(key)
    (out / "manifest.json").write_text(json.dumps(raw))
    m = load_manifest(out)
    assert m.count("train") + m.count("val") == 20  # the rest reads as before
    for ask in (lambda: m.count("test"), lambda: m.wds_shards("test")):
        with pytest.raises(UserError) as err:
            ask()
        assert str(err.value) == (f"{out} has no test split (prepared by an older fasthpt): re-run "
                                  "`fasthpt prep --dataset old ... --force`")
    with pytest.raises(UserError, match=r"test_frac None -> 0\.2; split_source None -> 'fractions'"):
        prepare("old", out=tmp_path / "out", src=src, **FAST)

