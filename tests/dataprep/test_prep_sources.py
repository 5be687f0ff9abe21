"""Sources: every supported format and pixel mode, bad files skipped with a reason, archives."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image
from tiny_images import tiny_image, write_tiny_folder

from dataprep import prepare
from dataprep.archives import TarSource, ZipSource
from dataprep.convert import SkipImage, decode_bytes
from dataprep.raster_read import Raster, decode
from dataprep.samples import read_samples
from dataprep.sources import Entry, FolderSource, list_tree

FORMATS = {"jpg": "JPEG", "png": "PNG", "tif": "TIFF", "bmp": "BMP", "webp": "WEBP"}
LOSSLESS = {"png", "tif", "bmp"}


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_each_format_decodes_to_rgb8(ext):
    ref = tiny_image(2, 0, 32)
    kw = {"webp": {"lossless": True}, "jpg": {"quality": 95, "subsampling": 0}}.get(ext, {})
    out = decode_bytes(encoded(Image.fromarray(ref), FORMATS[ext], **kw)).pixels
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    if ext in LOSSLESS or ext == "webp":
        assert np.array_equal(out, ref)  # stored losslessly: pixel-exact
    else:
        assert np.abs(out.astype(int) - ref).mean() < 4


def test_pixel_modes_become_8bit_rgb():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = decode_bytes(encoded(Image.fromarray(gray, "L"), "PNG")).pixels
    assert np.array_equal(out, np.repeat(gray[..., None], 3, 2))

    rgba = np.dstack([tiny_image(0, 0, 8), np.full((8, 8), 7, np.uint8)])
    out = decode_bytes(encoded(Image.fromarray(rgba, "RGBA"), "PNG")).pixels
    assert np.array_equal(out, rgba[..., :3])  # alpha dropped, colour kept

    pal = Image.fromarray(tiny_image(1, 0, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    out = decode_bytes(encoded(pal, "PNG")).pixels
    assert np.array_equal(out, np.asarray(pal.convert("RGB")))

    # 16 bits per channel: what prep's sources decode (raster_read.decode) keeps every value
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    out = decode(encoded(Image.fromarray(deep), "PNG"))
    assert isinstance(out, Raster) and out.pixels.dtype == np.uint16 and np.array_equal(out.pixels[..., 0], deep)

    import cv2

    deep_rgb = np.random.default_rng(0).integers(0, 65536, (6, 9, 3)).astype(np.uint16)
    for ext in (".tif", ".png"):  # 16 bits per channel colour (written by OpenCV, BGR order)
        data = cv2.imencode(ext, deep_rgb[..., ::-1])[1].tobytes()
        assert np.array_equal(decode(data).pixels, deep_rgb), ext  # RGB order, every bit

    cmyk = Image.fromarray(tiny_image(3, 0, 8)).convert("CMYK")
    assert decode_bytes(encoded(cmyk, "JPEG")).pixels.shape == (8, 8, 3)


def test_only_upright_baseline_rgb_jpegs_are_stored_unchanged():
    img = Image.fromarray(tiny_image(0, 1, 16))
    assert decode_bytes(encoded(img, "JPEG")).jpeg is not None
    assert decode_bytes(encoded(img, "PNG")).jpeg is None
    assert decode_bytes(encoded(img.convert("L"), "JPEG")).jpeg is None
    assert decode_bytes(encoded(img, "JPEG", progressive=True)).jpeg is None
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: DALI would turn it, FFCV would not
    assert decode_bytes(encoded(img, "JPEG", exif=exif.tobytes())).jpeg is None


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"hello, I am a text file\n", "not an image"),
    (random.Random(0).randbytes(64), "not an image"),
], ids=["empty", "text", "random-bytes"])
def test_bad_bytes_are_skipped_with_a_reason(data, reason):
    with pytest.raises(SkipImage, match=reason):
        decode_bytes(data)


def test_truncated_jpeg_is_skipped():
    data = encoded(Image.fromarray(tiny_image(0, 0, 48)), "JPEG")
    with pytest.raises(SkipImage, match="cannot decode"):
        decode_bytes(data[: len(data) // 2])


def test_class_root_is_found_below_wrapper_folders():
    entries = [Entry(p, 1, 0) for p in (
        "UCMerced_LandUse/Images/forest/a.tif", "UCMerced_LandUse/Images/beach/b.tif",
        "UCMerced_LandUse/readme.txt")]
    listing = list_tree(entries, ["UCMerced_LandUse/Images/empty"])
    assert listing.classes == ["beach", "forest"]
    assert listing.skipped == [("UCMerced_LandUse/readme.txt", "not inside a class folder")]
    assert listing.outside == ["UCMerced_LandUse/readme.txt"]  # the exact names, for callers that keep them
    assert listing.warnings == ["empty class folder ignored: UCMerced_LandUse/Images/empty"]


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Good images in every format and mode, plus every kind of bad file."""
    root = tmp_path_factory.mktemp("messy")
    good = {}
    for label, name in enumerate(("fields", "forest")):
        (root / name).mkdir()
        for k, ext in enumerate(sorted(FORMATS)):
            img = Image.fromarray(tiny_image(label, k, 40))
            img.save(root / name / f"img{k}.{ext}", format=FORMATS[ext])
            good[f"{name}/img{k}.{ext}"] = label
    # a 16-bit file among 8-bit ones: another kind of image than the dataset's, skipped and listed
    Image.fromarray(np.full((40, 40), 9, np.uint16) * 5000).save(root / "fields" / "deep.png")
    Image.fromarray(tiny_image(1, 9, 40)).convert("P").save(root / "forest" / "pal.png")
    good.update({"forest/pal.png": 1})
    jpeg = encoded(Image.fromarray(tiny_image(0, 9, 40)), "JPEG")
    (root / "fields" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "fields" / "notes.txt").write_text("not an image")
    (root / "forest" / "zero.png").write_bytes(b"")
    (root / "forest" / "garbage.jpg").write_bytes(os.urandom(500))
    (root / "forest" / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "forest" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "README.md").write_text("a dataset")
    (root / "snow").mkdir()  # empty class folder
    return root, good


def test_messy_folder_skips_and_counts(messy_folder, tmp_path, capsys):
    root, good = messy_folder
    out = prepare("messy", out=tmp_path, src=root, formats=("wds",), val_frac=0.0, test_frac=0.0,
                  workers=1, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == ["fields", "forest"]
    assert m["splits"]["train"]["count"] == len(good)
    assert sorted(read_samples(out, "train")) == sorted(good.items())
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"fields/truncated.jpg", "fields/notes.txt", "forest/zero.png",
                            "forest/garbage.jpg", "forest/dangling.jpg", "README.md", "fields/deep.png"}
    assert reasons["fields/deep.png"] == ("a uint16 raster of 1 band: the dataset holds 8-bit images (the most "
                                          "common kind among its files)")
    assert reasons["forest/zero.png"] == "empty file"
    assert reasons["fields/notes.txt"].startswith("not an image")
    assert reasons["fields/truncated.jpg"].startswith("cannot decode")
    assert reasons["forest/dangling.jpg"].startswith("unreadable")
    assert reasons["README.md"] == "not inside a class folder"
    assert m["warnings"] == ["empty class folder ignored: snow"]
    assert "val" not in m["splits"] and "test" not in m["splits"]  # fractions 0: no files at all
    err = capsys.readouterr().err
    assert "skipped 7 files" in err and "snow" in err


def _archive(folder, path, kind):
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for f in sorted(folder.rglob("*")):
                zf.write(f, f"wrap/{f.relative_to(folder)}")
    else:
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tf:
            tf.add(folder, arcname="wrap")
    return path


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_archives_give_the_same_dataset_as_the_folder(tmp_path, kind):
    folder = write_tiny_folder(tmp_path / "src", per_class=3, size=32)
    archive = _archive(folder, tmp_path / f"src.{kind}", kind)
    a = prepare("a", out=tmp_path / "out", src=folder, formats=("wds",), workers=1, progress=False)
    b = prepare("b", out=tmp_path / "out", src=archive, formats=("wds",), workers=1, progress=False)
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["classes"] == mb["classes"] and ma["splits"] == mb["splits"]
    assert mb["fingerprint"]["kind"] == kind.split(".")[0]
    for split in ("train", "val", "test"):
        keys_a, keys_b = read_samples(a, split), read_samples(b, split)
        assert keys_a and [("wrap/" + k, label) for k, label in keys_a] == keys_b
        # Same order, same stored bytes: the shards are byte-identical.
        assert (a / "wds" / f"{split}-000000.tar").read_bytes() == (b / "wds" / f"{split}-000000.tar").read_bytes()
    assert not list((tmp_path / "out").glob(".*"))  # scratch space and temp folders are gone


def test_sources_load_identically_in_a_forked_worker(tmp_path):
    """Zip handles are reopened per process; tar members are read with pread."""
    folder = write_tiny_folder(tmp_path / "src", per_class=2, size=16)
    zsrc = ZipSource("z", _archive(folder, tmp_path / "s.zip", "zip"))
    tsrc = TarSource("t", _archive(folder, tmp_path / "s.tar", "tar"), tmp_path / "scratch")
    fsrc = FolderSource("f", folder)
    for i in range(len(fsrc)):
        ref, label = fsrc.load(i)
        for src in (zsrc, tsrc):
            got, got_label = src.load(i)
            assert got_label == label and np.array_equal(got.pixels, ref.pixels)


def test_channel_sums_are_exact_on_both_histogram_paths(monkeypatch):
    import dataprep.convert as convert

    img = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ref = img.reshape(-1, 3).astype(np.int64)
    want = (ref.shape[0], tuple(ref.sum(0).tolist()), tuple((ref * ref).sum(0).tolist()))
    assert convert.channel_sums(img) == want  # cv2.calcHist path
    monkeypatch.setattr(convert, "_CV_HIST_MAX_PIXELS", 10)
    assert convert.channel_sums(img) == want  # np.bincount path (very large images)


def test_symlinked_class_folders_are_followed(tmp_path):
    store = write_tiny_folder(tmp_path / "store", per_class=2, size=16)
    (tmp_path / "view").mkdir()
    for name in ("blue_checks", "red_stripes"):
        (tmp_path / "view" / name).symlink_to(store / name, target_is_directory=True)
    src = FolderSource("v", tmp_path / "view")
    assert src.classes == ["blue_checks", "red_stripes"] and len(src) == 4


def test_every_format_reads_back_through_every_reader(messy_folder, tmp_path):
    """JPEG, PNG, TIFF, BMP, WebP and palette sources, among corrupt files, come back
    from FFCV, webdataset and DALI with their labels and their pixels (PSNR >= 28 dB)."""
    from dataprep.readback import dali_samples, ffcv_samples, psnr, wds_samples
    from fasthpt.manifest import load_manifest

    root, good = messy_folder
    out = prepare("messy", out=tmp_path, src=root, val_frac=0.0, test_frac=0.0, workers=1, progress=False)
    m = load_manifest(out)
    keys = [k for k, _ in read_samples(out, "train")]
    refs = []
    for key in keys:
        refs.append(np.asarray(Image.open(root / key).convert("RGB")))
    for name, (images, labels) in {
        "ffcv": ffcv_samples(m.ffcv_path("train")),
        "webdataset": wds_samples(m.wds_shards("train")),
        "dali": dali_samples(m.wds_shards("train")),
    }.items():
        assert labels == [good[k] for k in keys], name
        for key, img, ref in zip(keys, images, refs):
            assert psnr(img, ref) >= 28.0, (name, key)
