"""Prep never loses data: what --force may delete, outputs that overlap the source, one prep at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_images import write_tiny_folder

from dataprep import prepare
from fasthpt.cli import main
from fasthpt.errors import UserError
from fasthpt.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(formats=("wds",), workers=1, progress=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def images(tmp_path):
    return write_tiny_folder(tmp_path / "data" / "myds", per_class=2, size=16)


def _one_line_error(argv, capsys) -> str:
    assert main(["prep", *argv, "--formats", "wds", "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fasthpt prep: error:"), err
    return err


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_the_reported_data_loss_output_is_the_source(images, tmp_path, capsys, force):
    """`fasthpt prep --dataset myds --src data/myds` (default --out data): refused, with or
    without --force, and the images are all still there."""
    before = _tree(images)
    argv = ["--dataset", "myds", "--src", str(images), "--out", str(tmp_path / "data"), *force]
    err = _one_line_error(argv, capsys)
    assert "is --src" in err and "choose another --out or --dataset" in err and "remove" not in err
    assert _tree(images) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["myds"]  # no lock, no temp left


def test_an_output_inside_the_source_or_containing_it_is_refused(images, tmp_path, capsys):
    err = _one_line_error(["--dataset", "x", "--src", str(images), "--out", str(images)], capsys)
    assert "lies inside --src" in err
    inner = write_tiny_folder(tmp_path / "out" / "x" / "raw", per_class=2, size=16)
    err = _one_line_error(["--dataset", "x", "--src", str(inner), "--out", str(tmp_path / "out")], capsys)
    assert "contains --src" in err
    assert len(_tree(inner)) == 8 and not (tmp_path / "out" / "x" / "manifest.json").exists()


def test_symlinks_are_resolved_before_comparing_output_and_source(images, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "alias").symlink_to(images, target_is_directory=True)
    before = _tree(images)
    err = _one_line_error(["--dataset", "alias", "--src", str(images), "--out", str(tmp_path / "out"),
                           "--force"], capsys)
    assert "is --src" in err
    (tmp_path / "src_link").symlink_to(images, target_is_directory=True)
    err = _one_line_error(["--dataset", "y", "--src", str(tmp_path / "src_link"), "--out", str(images)], capsys)
    assert "lies inside --src" in err
    assert _tree(images) == before


def test_force_refuses_a_folder_whose_manifest_is_not_preps(images, tmp_path):
    mine = tmp_path / "out" / "m"
    mine.mkdir(parents=True)
    (mine / "manifest.json").write_text(json.dumps({"name": "my own project", "files": {}}))
    (mine / "notes.md").write_text("precious")
    with pytest.raises(UserError, match="not written by `fasthpt prep`"):
        prepare("m", out=tmp_path / "out", src=images, force=True, **FAST)
    assert (mine / "notes.md").read_text() == "precious"


def test_force_refuses_a_prep_output_that_holds_someone_elses_files(images, tmp_path):
    out = prepare("p", out=tmp_path / "out", src=images, **FAST)
    (out / "wds" / "my_notes.txt").write_text("precious")
    foreign = r"holds 1 files or folders `fasthpt prep` did not write \(e\.g\. wds/my_notes\.txt\)"
    with pytest.raises(UserError, match=foreign):
        prepare("p", out=tmp_path / "out", src=images, val_frac=0.5, force=True, **FAST)
    assert (out / "wds" / "my_notes.txt").read_text() == "precious"
    (out / "wds" / "my_notes.txt").unlink()
    prepare("p", out=tmp_path / "out", src=images, val_frac=0.5, force=True, **FAST)
    assert load_manifest(out).raw["settings"]["val_frac"] == 0.5  # only prep's own files: rebuilt


_HOLDING_RUN = """
import sys, time
import dataprep.manifest as mf
from dataprep import prepare

def hang(folder, manifest):  # hold the output lock, mid-run, until killed
    print("READY", flush=True)
    time.sleep(120)

mf.write_manifest = hang
prepare("c", out=sys.argv[1], src=sys.argv[2], formats=("wds",), workers=1, progress=False)
"""


@pytest.mark.timeout(300)
def test_a_second_prep_into_the_same_output_refuses_and_the_lock_dies_with_the_first(images, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDING_RUN, str(out), str(images)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        with pytest.raises(UserError, match=rf"another `fasthpt prep` \(pid {proc.pid}\) is writing .*c;"):
            prepare("c", out=out, src=images, **FAST)
        prepare("other", out=out, src=images, **FAST)  # another dataset in the same --out: not locked
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    dest = prepare("c", out=out, src=images, **FAST)  # kill -9 left no lock behind
    assert load_manifest(dest).count("train") > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # lock and temp removed


def test_lock_is_refused_in_process_too_and_released_after_an_error(images, tmp_path):
    from dataprep.lock import output_lock

    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out, "d"):
        assert (out / ".d.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match="another `fasthpt prep`"):
            prepare("d", out=out, src=images, **FAST)
    with pytest.raises(UserError, match="--val-frac"):
        prepare("d", out=out, src=images, val_frac=2.0, **FAST)
    with pytest.raises(UserError, match="no image files found"):
        (tmp_path / "empty").mkdir()
        prepare("d", out=out, src=tmp_path / "empty", **FAST)
    assert prepare("d", out=out, src=images, **FAST).is_dir()  # the failed runs released it


def test_files_added_to_the_output_during_a_forced_rebuild_are_not_deleted(images, tmp_path, monkeypatch):
    import dataprep.prep as prep_module

    out = prepare("q", out=tmp_path / "out", src=images, **FAST)
    real_build = prep_module._build

    def build_while_someone_writes(*args):
        (out / "added_meanwhile.txt").write_text("precious")
        return real_build(*args)

    monkeypatch.setattr(prep_module, "_build", build_while_someone_writes)
    with pytest.raises(UserError, match="did not write.*added_meanwhile.txt"):
        prepare("q", out=tmp_path / "out", src=images, val_frac=0.5, force=True, **FAST)
    assert (out / "added_meanwhile.txt").read_text() == "precious"
    assert load_manifest(out).raw["settings"]["val_frac"] == 0.2  # the old output, untouched
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_only_this_datasets_own_temporary_names_are_cleaned_up(images, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # a pid that has exited
    ours = [out / f".a.tmp-{dead}", out / f".a.old-{dead}"]
    others = [out / f".a.b-c.tmp-{dead}", out / f".a.backup-{dead}", out / ".a.tmp-notes"]
    for path in ours + others:
        path.mkdir(parents=True)
    prepare("a", out=out, src=images, **FAST)
    assert not any(p.exists() for p in ours) and all(p.exists() for p in others)


def test_a_link_planted_as_the_lock_file_is_refused_and_its_target_untouched(images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim.txt").write_text("precious")
    (out / ".v.lock").symlink_to(tmp_path / "victim.txt")
    with pytest.raises(UserError, match="is not a lock file of `fasthpt prep`"):
        prepare("v", out=out, src=images, **FAST)
    assert (tmp_path / "victim.txt").read_text() == "precious" and (out / ".v.lock").is_symlink()


def test_force_counts_the_feature_cache_eval_wrote_as_the_tools_own(tmp_path):
    """`fasthpt eval` caches features in DATA/.cache/features; a rebuild removes them with the data
    they were computed from (half-written ones too), but still refuses a stranger's file there."""
    from fasthpt.eval.knn import run_knn

    images = write_tiny_folder(tmp_path / "src", per_class=6, size=16)
    out = prepare("p", out=tmp_path / "out", src=images, test_frac=0.25, val_frac=0.25, **FAST)
    run_knn("random", out, arch="resnet_micro", k=1, res=16, batch_size=8, workers=0, backend="torch",
            progress=False, quiet=True)
    cache = out / ".cache" / "features"
    written = sorted(p.name for p in cache.iterdir())
    assert len(written) == 3 and all(n.endswith("-r16-torch-cpu.pt") for n in written)
    (cache / f".{written[0]}.12345.tmp").write_bytes(b"half")  # an eval killed mid-write
    for stranger in (cache / "my_notes.txt", out / ".cache" / "other.pt", cache / "x-y.pt"):
        stranger.write_text("precious")
        with pytest.raises(UserError, match="did not write"):
            prepare("p", out=tmp_path / "out", src=images, test_frac=0.25, val_frac=0.5, force=True, **FAST)
        assert stranger.read_text() == "precious"
        stranger.unlink()
    assert main(["prep", "--dataset", "p", "--src", str(images), "--out", str(tmp_path / "out"), "--val-frac", "0.5",
                 "--test-frac", "0.25", "--force", "--formats", "wds", "--workers", "1", "--no-progress"]) == 0
    assert load_manifest(out).raw["settings"]["val_frac"] == 0.5 and not (out / ".cache").exists()
