"""Runs as a whole: no-op re-runs, refusals, --force, interruption, workers, generators, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_images import write_tiny_folder

import dataprep.prep as prep_module
from dataprep import prepare
from dataprep.samples import read_samples
from fasthpt.cli import main
from fasthpt.errors import UserError
from fasthpt.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(formats=("wds",), workers=1, progress=False)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return write_tiny_folder(tmp_path_factory.mktemp("small"), per_class=5, size=24)


def test_second_run_is_a_noop_and_says_so(small_folder, tmp_path, capsys):
    out = prepare("s", out=tmp_path, src=small_folder, **FAST)
    before = (out / "manifest.json").stat().st_mtime_ns, (out / "wds" / "train-000000.tar").stat().st_mtime_ns
    capsys.readouterr()
    assert prepare("s", out=tmp_path, src=small_folder, **{**FAST, "workers": 2}) == out
    assert "already prepared" in capsys.readouterr().out
    after = (out / "manifest.json").stat().st_mtime_ns, (out / "wds" / "train-000000.tar").stat().st_mtime_ns
    assert before == after


def test_different_settings_or_source_refuse_then_force_rebuilds(small_folder, tmp_path):
    out = prepare("s", out=tmp_path, src=small_folder, **FAST)
    with pytest.raises(UserError, match=r"val_frac 0\.2 -> 0\.4.*--force"):
        prepare("s", out=tmp_path, src=small_folder, val_frac=0.4, **FAST)
    extra = small_folder / "blue_checks" / "new.png"
    extra.write_bytes((small_folder / "blue_checks" / "001.png").read_bytes())
    try:
        with pytest.raises(UserError, match="source contents changed"):
            prepare("s", out=tmp_path, src=small_folder, **FAST)
    finally:
        extra.unlink()
    prepare("s", out=tmp_path, src=small_folder, val_frac=0.4, force=True, **FAST)
    assert load_manifest(out).raw["settings"]["val_frac"] == 0.4
    assert not list(tmp_path.glob(".*"))  # the replaced output is gone too


def test_a_folder_that_is_not_a_prep_output_is_not_overwritten(small_folder, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mine.txt").write_text("precious")
    for force in (False, True):
        with pytest.raises(UserError, match="not written by `fasthpt prep`.*choose another --out"):
            prepare("s", out=tmp_path, src=small_folder, force=force, **FAST)
    assert (tmp_path / "s" / "mine.txt").read_text() == "precious"


def test_failure_mid_write_leaves_nothing_that_looks_complete(small_folder, tmp_path, monkeypatch):
    prepare("s", out=tmp_path, src=small_folder, **FAST)  # an older complete output
    real_close = prep_module.ShardWriter.close

    def close_then_interrupt(self):
        real_close(self)
        raise KeyboardInterrupt  # Ctrl-C after shards exist, before the manifest

    monkeypatch.setattr(prep_module.ShardWriter, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare("s", out=tmp_path, src=small_folder, val_frac=0.4, force=True, **FAST)
    assert load_manifest(tmp_path / "s").raw["settings"]["val_frac"] == 0.2  # old one untouched
    assert not list(tmp_path.glob(".*"))
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(prep_module.ShardWriter, "close", close_then_interrupt)
        prepare("t", out=tmp_path, src=small_folder, **FAST)
    assert not (tmp_path / "t").exists()


_KILLED_RUN = """
import sys, time
import dataprep.manifest as mf
from dataprep import prepare

def hang(folder, manifest):  # write half a manifest, then wait to be killed
    (folder / "manifest.json").write_text('{"name": "k", "clas')
    print("READY", flush=True)
    time.sleep(60)

mf.write_manifest = hang
prepare("k", out=sys.argv[1], src=sys.argv[2], formats=("wds",), workers=1, progress=False)
"""


def test_killed_run_leaves_only_a_stale_temp_dir_which_the_next_run_removes(small_folder, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(tmp_path), str(small_folder)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    stale = list(tmp_path.glob(".k.tmp-*"))
    assert len(stale) == 1 and (stale[0] / "manifest.json").exists()
    assert not (tmp_path / "k").exists()
    with pytest.raises(UserError):
        load_manifest(tmp_path / "k")
    out = prepare("k", out=tmp_path, src=small_folder, **FAST)
    assert load_manifest(out).count("train") > 0
    assert not stale[0].exists()


def test_temp_dir_of_a_live_run_is_left_alone(small_folder, tmp_path):
    live = tmp_path / f".s.tmp-{os.getppid()}"
    live.mkdir()
    prepare("s", out=tmp_path, src=small_folder, **FAST)
    assert live.exists()


def test_pool_workers_write_the_same_bytes_as_one_process(small_folder, tmp_path):
    a = prepare("one", out=tmp_path, src=small_folder, **FAST)
    b = prepare("two", out=tmp_path, src=small_folder, **{**FAST, "workers": 2})
    for split in ("train", "val", "test"):
        name = f"wds/{split}-000000.tar"
        assert (a / name).read_bytes() == (b / name).read_bytes()
    ma, mb = load_manifest(a), load_manifest(b)
    assert (ma.mean, ma.std) == (mb.mean, mb.std)


def test_shards_split_at_shard_size_and_seed_changes_the_split(small_folder, tmp_path):
    a = prepare("a", out=tmp_path, src=small_folder, shard_size=4, **FAST)
    m = load_manifest(a)
    shards = m.wds_shards("train")
    assert len(shards) == -(-m.count("train") // 4)
    counts = [int(s.with_suffix(".idx").read_text().split()[1]) for s in shards]
    assert sum(counts) == m.count("train") and max(counts) == 4
    b = prepare("b", out=tmp_path, src=small_folder, seed=1, **FAST)
    assert read_samples(a, "val") != read_samples(b, "val")
    assert load_manifest(b).raw["splits"] == m.raw["splits"]  # still stratified the same way


def test_embedded_generator_end_to_end(tmp_path, capsys):
    from dataprep import synthetic

    out = prepare("sat", out=tmp_path, num_images=36, image_size=32, val_frac=0.25, **FAST)
    m = load_manifest(out)
    gen = synthetic.get_generator("sat", num_images=36, image_size=32)
    assert m.classes == list(gen.classes)
    assert m.count("train") + m.count("val") + m.count("test") == 36
    assert m.raw["fingerprint"]["kind"] == "generator"
    assert m.raw["storage"]["max_hw"] == [32, 32]
    prepare("sat", out=tmp_path, num_images=36, image_size=32, val_frac=0.25, **FAST)
    assert "already prepared" in capsys.readouterr().out
    with pytest.raises(UserError, match="num_images 36 -> 40"):
        prepare("sat", out=tmp_path, num_images=40, image_size=32, val_frac=0.25, **FAST)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "imagenet"], "unknown --dataset 'imagenet'"),
    (["--dataset", "x", "--src", "/no/such/dir"], "no such file or folder"),
    (["--dataset", "x", "--src", "EMPTY"], "no image files found"),
    (["--dataset", "x", "--src", "EMPTY", "--formats", "ffcv,tfrecord"], "--formats"),
    (["--dataset", "x", "--src", "EMPTY", "--val-frac", "1.5"], "--val-frac"),
    (["--dataset", "../evil", "--src", "EMPTY"], "--dataset"),
    (["--dataset", "x", "--src", "FLAT"], "no class folders"),
    (["--dataset", "x", "--src", "BAD"], "no usable images (1 files skipped, e.g. cls/a.jpg: not an image"),
    (["--dataset", "x", "--src", "NOTES.ZIP"], "not a folder, .zip or .tar archive"),
    (["--dataset", "x", "--src", "BAD", "--out", "NOTES.ZIP"], "--out"),
    (["--dataset", "x", "--src", "EMPTY", "--num-images", "5"], "embedded datasets only"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"not even read")
    (tmp_path / "bad" / "cls").mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "a.jpg").write_bytes(b"\xff\xd8 corrupt")
    (tmp_path / "notes.zip").write_text("not an archive")
    names = ("EMPTY", "FLAT", "BAD", "NOTES.ZIP")
    argv = [str(tmp_path / a.lower()) if a in names else a for a in argv]
    assert main(["prep", "--out", str(tmp_path / "out"), *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("fasthpt prep: error:")


def test_cli_prepares_and_reruns(small_folder, tmp_path, capsys):
    argv = ["prep", "--dataset", "c", "--src", str(small_folder), "--out", str(tmp_path),
            "--formats", "wds", "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    assert "images/s" in capsys.readouterr().err
    assert main(argv) == 0
    assert "already prepared" in capsys.readouterr().out
    assert main(argv[:-1] + ["--max-res", "16", "--no-progress"]) == 2


@pytest.mark.timeout(600)
def test_a_dying_ffcv_writer_process_fails_instead_of_hanging(small_folder, tmp_path, monkeypatch):
    import dataprep.writers as writers

    def broken(self, i):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers._StoredJpegs, "__getitem__", broken)
    # a hang would be caught by the timeout marker (generous: it detects hangs, not slowness)
    with pytest.raises(UserError, match="FFCV's writer process failed"):
        prepare("f", out=tmp_path, src=small_folder, formats=("ffcv",), workers=1, progress=False)
    assert not (tmp_path / "f").exists() and not list(tmp_path.glob(".*"))


def test_natural_generator_prepares(tmp_path):
    out = prepare("natural", out=tmp_path, num_images=12, image_size=32, **FAST)
    m = load_manifest(out)
    assert sum(s["count"] for s in m.raw["splits"].values()) == 12 and m.num_classes >= 2


def test_ffcv_only_keeps_no_shards(small_folder, tmp_path):
    out = prepare("o", out=tmp_path, src=small_folder, formats="ffcv", workers=1, progress=False)
    m = load_manifest(out)
    assert m.formats == ["ffcv"] and m.ffcv_path("train").stat().st_size > 0
    assert not (out / "wds").exists()
    with pytest.raises(UserError, match="--formats including wds"):
        m.wds_shards("train")


def test_spelling_out_the_generator_defaults_is_still_a_noop(tmp_path, capsys, monkeypatch):
    from dataprep import synthetic

    monkeypatch.setitem(synthetic.DEFAULTS, "sat", {"num_images": 24, "image_size": 24})
    prepare("sat", out=tmp_path, val_frac=0.25, **FAST)  # the defaults, unspelled
    capsys.readouterr()
    prepare("sat", out=tmp_path, num_images=24, image_size=24, val_frac=0.25, **FAST)
    assert "already prepared" in capsys.readouterr().out
    with pytest.raises(UserError, match="image_size 24 -> 32"):
        prepare("sat", out=tmp_path, num_images=24, image_size=32, val_frac=0.25, **FAST)
