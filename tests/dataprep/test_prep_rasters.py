"""Rasters through prep (dataprep/rasters.py): 12/16-bit, float and N-band files are stored as they
are, one (bands, dtype) per dataset, with per-band statistics of the train split in the manifest."""

from __future__ import annotations

import io
import json
import zipfile

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from dataprep import prepare
from dataprep import raster_read as rr
from dataprep.readback import raster_dali_samples, raster_ffcv_samples, raster_wds_samples
from dataprep.samples import read_samples
from fasthpt.errors import UserError
from fasthpt.manifest import SCALING, load_manifest

FAST = dict(workers=1, progress=False, test_frac=0)
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _gdal_names(names) -> str:
    items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>' for i, n in enumerate(names))
    return f"<GDALMetadata>{items}</GDALMetadata>"


def write_geotiff(path, chw: np.ndarray, names=None, compression="zlib", planar="separate"):
    """A GeoTIFF as GDAL writes them: bands first (planar), band descriptions in GDAL_METADATA."""
    extratags = [(42112, "s", 0, _gdal_names(names), True)] if names else []
    data = chw if planar == "separate" else np.moveaxis(chw, 0, -1)
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig=planar, compression=compression,
                     extratags=extratags)


def _stored(out, split="train"):
    """{source path: stored array} of a split, read through the WebDataset shards."""
    m = load_manifest(out)
    arrays, labels = raster_wds_samples(m.wds_shards(split))
    keys = read_samples(out, split)
    assert [label for _, label in keys] == labels
    return {k: a for (k, _), a in zip(keys, arrays)}


def _all_readers_agree(out, split="train"):
    m = load_manifest(out)
    wds, labels = raster_wds_samples(m.wds_shards(split))
    for name, (arrays, labs) in {"ffcv": raster_ffcv_samples(m.ffcv_path(split)),
                                 "dali": raster_dali_samples(m.wds_shards(split))}.items():
        assert labs == labels, name
        assert all(a.dtype == w.dtype and np.array_equal(a, w) for a, w in zip(arrays, wds)), name


# ---------------------------------------------------------------- acceptance: 12-bit structure, levels

def _striped(label: int, k: int, size: int = 24) -> np.ndarray:
    """12-bit image around 2000 with stripes 8 levels deep: horizontal (class 0) or vertical (1)."""
    rng = np.random.default_rng(100 * label + k)
    y, x = np.mgrid[0:size, 0:size]
    stripes = ((y if label == 0 else x) + k) // 2 % 2 * 8
    return (2000 + stripes + rng.normal(0, 1.5, (size, size))).round().astype(np.uint16)


@pytest.fixture(scope="module")
def twelve_bit(tmp_path_factory):
    root = tmp_path_factory.mktemp("twelve")
    for label, name in enumerate(("horizontal", "vertical")):
        (root / name).mkdir()
        for k in range(10):  # 16-bit grayscale PNGs (Pillow's I;16), as X-ray datasets ship
            Image.fromarray(_striped(label, k)).save(root / name / f"{k}.png")
    out = prepare("twelve", out=tmp_path_factory.mktemp("out"), src=root, val_frac=0.4, **FAST)
    return root, out


def test_twelve_bit_structure_a_few_levels_deep_is_stored_exactly(twelve_bit):
    root, out = twelve_bit
    m = load_manifest(out)
    assert (m.image_format, m.bands, m.dtype, m.band_names) == ("raster", 1, "uint16", None)
    for split in ("train", "val"):
        for key, stored in _stored(out, split).items():
            assert stored.shape == (24, 24, 1) and np.array_equal(stored[..., 0], np.asarray(Image.open(root / key)))
    _all_readers_agree(out)


def test_twelve_bit_classes_stay_separable_for_a_random_init_knn(twelve_bit):
    """Stripes 8 levels deep: a kNN on the features of a random-init backbone, fed the stored
    arrays standardised by the manifest, tells the classes apart; the old rule (a 16-bit file's
    high byte) leaves it at chance on the same files."""
    from fasthpt.eval.knn import knn_accuracy
    from fasthpt.models.backbones import build_backbone

    _, out = twelve_bit
    m = load_manifest(out)
    torch.manual_seed(0)
    net = build_backbone("resnet18", in_chans=m.bands).eval()

    def features(split, old_rule=False):
        arrays, labels = raster_wds_samples(m.wds_shards(split))
        x = torch.tensor(np.stack(arrays) >> 8 if old_rule else np.stack(arrays), dtype=torch.float32)
        x = (x.permute(0, 3, 1, 2) - x.mean()) / max(x.std(), 1e-6) if old_rule else (
            (x.permute(0, 3, 1, 2) - torch.tensor(m.mean).view(1, -1, 1, 1)) / torch.tensor(m.std).view(1, -1, 1, 1))
        with torch.no_grad():
            return net(x), torch.tensor(labels)

    assert knn_accuracy(*features("train"), *features("val"), num_classes=2, k=3) >= 0.9
    assert knn_accuracy(*features("train", True), *features("val", True), num_classes=2, k=3) <= 0.6


def test_levels_compare_between_files_whatever_each_files_maximum(tmp_path):
    dim = np.full((16, 16), 250, np.uint16)
    dim[::3] = 7
    bright = np.linspace(0, 4000, 256).reshape(16, 16).astype(np.uint16)
    for name, arr in (("a", dim), ("b", bright)):
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(3):
            tifffile.imwrite(tmp_path / "src" / name / f"{k}.tif", arr + k)
    out = prepare("levels", out=tmp_path / "out", src=tmp_path / "src", val_frac=0, **FAST)
    stored = _stored(out)
    for key, arr in stored.items():
        k = int(key[-5])
        assert np.array_equal(arr[..., 0], (dim if key.startswith("a/") else bright) + k), key
    m = load_manifest(out)
    assert m.value_range == [[0, 4002]]
    every = np.concatenate([a.ravel() for a in stored.values()]).astype(np.float64)
    assert m.mean == pytest.approx([every.mean()]) and m.std == pytest.approx([every.std()])


# ---------------------------------------------------------------- float reflectance, 12-bit RGB, int16

def _statistics_match(out, m):
    """The manifest's per-band statistics against numpy over the stored train arrays."""
    pixels = np.concatenate([a.reshape(-1, a.shape[2]) for a in _stored(out).values()])
    wide = pixels.astype(np.float64)
    assert m.mean == pytest.approx(wide.mean(0).tolist(), rel=1e-9)
    assert m.std == pytest.approx(wide.std(0).tolist(), rel=1e-9)
    assert m.value_range == [[lo, hi] for lo, hi in zip(pixels.min(0).tolist(), pixels.max(0).tolist())]
    want = np.percentile(pixels, (0.1, 99.9), axis=0, method="inverted_cdf").T.tolist()
    assert m.percentiles == want  # exact: the histogram for integers, every pixel still in the float sample
    assert m.scaling == SCALING == "standardise per band: (x - mean[c]) / std[c]"
    return pixels


def test_float_reflectance_is_stored_as_it_is_with_dataset_statistics_not_black(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("dark", "bright"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(4):  # 3-band float32 reflectance 0..0.4 (the old path skipped these as "not an image")
            refl = rng.uniform(0.0, 0.15 if name == "dark" else 0.4, (20, 20, 3)).astype(np.float32)
            tifffile.imwrite(tmp_path / "src" / name / f"{k}.tif", refl, photometric="rgb")
    out = prepare("refl", out=tmp_path / "out", src=tmp_path / "src", val_frac=0, **FAST)
    m = load_manifest(out)
    assert (m.image_format, m.bands, m.dtype) == ("raster", 3, "float32")
    for key, arr in _stored(out).items():
        assert arr.dtype == np.float32 and np.array_equal(arr, tifffile.imread(tmp_path / "src" / key))
    pixels = _statistics_match(out, m)
    assert 0.1 < min(m.mean) and max(m.std) < 0.2 and pixels.max() <= 0.4  # reflectance units, not 0..255
    assert "reservoir" in m.raw["statistics"]["percentiles"]
    _all_readers_agree(out)


def test_twelve_bit_rgb_pngs_keep_their_values_and_colour_order(tmp_path):
    rng = np.random.default_rng(2)
    refs = {}
    for name in ("x", "y"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(3):
            rgb = rng.integers(0, 4096, (18, 22, 3)).astype(np.uint16)
            rgb[..., 0] |= 1  # red odd, blue even: a BGR/RGB swap cannot pass
            rgb[..., 2] &= ~np.uint16(1)
            cv2.imwrite(str(tmp_path / "src" / name / f"{k}.png"), rgb[..., ::-1])  # 16-bit RGB PNG (Pillow cannot)
            refs[f"{name}/{k}.png"] = rgb
    out = prepare("rgb12", out=tmp_path / "out", src=tmp_path / "src", val_frac=0, **FAST)
    m = load_manifest(out)
    assert (m.bands, m.dtype) == (3, "uint16")
    assert all(np.array_equal(arr, refs[key]) for key, arr in _stored(out).items())
    _statistics_match(out, m)
    assert all(1500 < v < 2600 for v in m.mean)  # 12-bit levels, not near black


def test_signed_16_bit_values_keep_their_sign(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("p", "q"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(3):  # e.g. a DEM or CT in Hounsfield units, as .npy (H x W)
            np.save(tmp_path / "src" / name / f"{k}.npy", rng.integers(-1000, 3000, (12, 12)).astype(np.int16))
    out = prepare("signed", out=tmp_path / "out", src=tmp_path / "src", val_frac=0, **FAST)
    m = load_manifest(out)
    assert (m.bands, m.dtype) == (1, "int16")
    pixels = _statistics_match(out, m)
    assert pixels.min() < 0 and m.value_range[0][0] < 0
    _all_readers_agree(out)


# ---------------------------------------------------------------- 13 bands, layouts, compressions

@pytest.fixture(scope="module")
def thirteen(tmp_path_factory):
    """A 13-band uint16 GeoTIFF folder: LZW and deflate, bands first and interleaved, band names
    in GDAL's metadata; band c holds values near 300 c, so a transposed read cannot pass."""
    root = tmp_path_factory.mktemp("s2")
    rng = np.random.default_rng(4)
    refs = {}
    for name in ("forest", "lake"):
        (root / name).mkdir()
        for k in range(5):
            chw = (np.arange(13)[:, None, None] * 300 + rng.integers(0, 200, (13, 16, 20))).astype(np.uint16)
            compression, planar = [("lzw", "separate"), ("zlib", "separate"), ("lzw", "contig")][k % 3]
            write_geotiff(root / name / f"{k}.tif", chw, S2, compression, planar)
            refs[f"{name}/{k}.tif"] = np.moveaxis(chw, 0, -1)
    out = prepare("s2tif", out=tmp_path_factory.mktemp("out"), src=root, val_frac=0.2, **FAST)
    return root, out, refs


def test_a_13_band_uint16_tiff_folder_goes_through_prep(thirteen):
    _, out, refs = thirteen
    m = load_manifest(out)
    assert (m.image_format, m.bands, m.dtype, m.band_names) == ("raster", 13, "uint16", S2)
    assert len(m.mean) == len(m.std) == 13 and len(m.value_range) == len(m.percentiles) == 13
    for key, arr in _stored(out).items():
        assert arr.shape == (16, 20, 13) and np.array_equal(arr, refs[key]), key
    assert [round(v / 300) for v in m.mean] == list(range(13))
    _statistics_match(out, m)
    _all_readers_agree(out)
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["schema"] == 4 and raw["storage"]["encoding"] == "raster"


def test_shards_hold_npy_members_and_their_dali_index_lists_them(thirteen):
    import tarfile

    _, out, _ = thirteen
    shard = load_manifest(out).wds_shards("train")[0]
    with tarfile.open(shard) as tf:
        names = tf.getnames()
    assert names[:2] == ["0000000.npy", "0000000.cls"] and not any(n.endswith(".jpg") for n in names)
    lines = shard.with_suffix(".idx").read_text().splitlines()
    assert lines[0] == f"v1.2 {len(names) // 2}"
    assert lines[1].startswith("npy ") and " 0000000.npy cls " in lines[1]


def test_every_tiff_band_layout_reads_to_the_same_h_w_c(tmp_path):
    chw = (np.arange(4)[:, None, None] * 1000 + np.arange(30).reshape(5, 6)).astype(np.uint16)
    want = np.moveaxis(chw, 0, -1)
    layouts = {"interleaved": dict(photometric="minisblack", planarconfig="contig", data=want),
               "band-sequential": dict(photometric="minisblack", planarconfig="separate", data=chw),
               "one band per page": dict(photometric="minisblack", data=chw),
               "imagej channels": dict(photometric="minisblack", data=chw, metadata={"axes": "CYX"})}
    for name, kw in layouts.items():
        buf = io.BytesIO()
        tifffile.imwrite(buf, kw.pop("data"), **kw)
        got = rr.decode(buf.getvalue())
        assert isinstance(got, rr.Raster) and np.array_equal(got.pixels, want), name
        assert rr.kind_of(buf.getvalue()).kind == rr.Kind(4, "uint16"), name


def test_eight_bit_tiffs_keep_the_jpeg_path_unless_extra_samples_are_data():
    rgb = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="TIFF", compression="tiff_lzw")  # UC Merced's kind of file
    assert isinstance(rr.decode(buf.getvalue()), rr.Decoded) and rr.kind_of(buf.getvalue()).kind.eight_bit
    rgba = io.BytesIO()
    tifffile.imwrite(rgba, np.dstack([rgb, rgb[..., :1]]), photometric="rgb", extrasamples=["unassalpha"])
    assert np.array_equal(rr.decode(rgba.getvalue()).pixels, rgb)  # alpha dropped, as before
    nir = io.BytesIO()  # an RGB + NIR tile (NAIP-like): the 4th sample is data, not alpha
    tifffile.imwrite(nir, np.dstack([rgb, rgb[..., :1]]), photometric="rgb", extrasamples=["unspecified"])
    got = rr.decode(nir.getvalue())
    assert isinstance(got, rr.Raster) and got.header.kind == rr.Kind(4, "uint8")


@pytest.mark.parametrize("make, reason", [
    (lambda b: tifffile.imwrite(b, np.zeros((3, 8, 8), np.uint16), photometric="minisblack",
                                metadata={"axes": "ZYX"}), "unsupported TIFF layout (axes ZYX"),
    (lambda b: tifffile.imwrite(b, np.zeros((8, 8), np.int32)), "int32 values: prep stores uint8, uint16"),
    (lambda b: np.save(b, np.zeros((2, 8, 8, 3), np.uint16)), "prep reads H x W or H x W x C"),
    (lambda b: np.save(b, np.array([[{"a": 1}]], dtype=object)), "object values"),
    (lambda b: b.write(b"II*\0" + b"\xff" * 40), "cannot decode"),
])
def test_rasters_that_cannot_be_samples_say_why(make, reason):
    buf = io.BytesIO()
    make(buf)
    with pytest.raises(rr.SkipImage, match=reason.replace("(", r"\(")):
        rr.decode(buf.getvalue())


def test_a_file_too_large_to_decode_is_refused_before_decoding(monkeypatch):
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((64, 64, 5), np.uint16), photometric="minisblack", compression="zlib")
    monkeypatch.setattr(rr, "MAX_DECODED_BYTES", 1000)
    with pytest.raises(rr.SkipImage, match=r"64 x 64 x 5 uint16 .*larger than prep decodes .*tile it first"):
        rr.decode(buf.getvalue())


# ---------------------------------------------------------------- one kind per dataset

def test_files_of_another_kind_are_listed_and_skipped(tmp_path, capsys):
    rng = np.random.default_rng(6)
    src = tmp_path / "src"
    for name in ("a", "b"):
        (src / name).mkdir(parents=True)
        for k in range(3):
            write_geotiff(src / name / f"{k}.tif", rng.integers(0, 4096, (13, 8, 8)).astype(np.uint16), S2)
    tifffile.imwrite(src / "a" / "gray.tif", np.zeros((8, 8), np.uint16))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "b" / "photo.jpg")
    write_geotiff(src / "b" / "float.tif", rng.random((13, 8, 8)).astype(np.float32))
    out = prepare("mixed", out=tmp_path / "out", src=src, val_frac=0, **FAST)
    m = load_manifest(out)
    assert (m.bands, m.dtype, m.split("train").count) == (13, "uint16", 6)
    reasons = {s["path"]: s["reason"] for s in m.raw["skipped"]}
    tail = ": the dataset holds uint16 rasters of 13 bands (the most common kind among its files)"
    assert reasons == {"a/gray.tif": "a uint16 raster of 1 band" + tail, "b/photo.jpg": "an 8-bit image" + tail,
                       "b/float.tif": "a float32 raster of 13 bands" + tail}
    err = capsys.readouterr().err
    assert "the files hold 4 kinds of images (uint16 rasters of 13 bands: 6; " in err and "skipped 3 files" in err


def test_float64_is_stored_as_float32_said_once_and_nan_files_are_skipped(tmp_path, capsys):
    rng = np.random.default_rng(7)
    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(3):
            np.save(tmp_path / "src" / name / f"{k}.npy", rng.random((6, 6, 2)))  # float64
    bad = rng.random((6, 6, 2))
    bad[1, 2, 0] = np.nan
    np.save(tmp_path / "src" / "a" / "nan.npy", bad)
    out = prepare("f64", out=tmp_path / "out", src=tmp_path / "src", val_frac=0, **FAST)
    m = load_manifest(out)
    assert (m.bands, m.dtype) == (2, "float32")
    for key, arr in _stored(out).items():
        assert np.array_equal(arr, np.load(tmp_path / "src" / key).astype(np.float32))
    reasons = {s["path"]: s["reason"] for s in m.raw["skipped"]}
    assert reasons == {"a/nan.npy": "1 NaN or infinite values: prep stores finite values only (fill or mask them "
                                    "in the files first)"}
    assert capsys.readouterr().err.count("7 float64 files are stored as float32") == 1


def test_band_names_option_and_its_checks(tmp_path):
    src = tmp_path / "src"
    for name in ("a", "b"):
        (src / name).mkdir(parents=True)
        for k in range(2):
            np.save(src / name / f"{k}.npy", np.full((4, 4, 4), k, np.uint16))
    out = prepare("named", out=tmp_path / "out", src=src, val_frac=0, band_names="B02,B03,B04,B08", **FAST)
    assert load_manifest(out).band_names == ["B02", "B03", "B04", "B08"]
    with pytest.raises(UserError, match="--band-names gives 3 names for 4 bands"):
        prepare("named2", out=tmp_path / "out", src=src, val_frac=0, band_names="B02,B03,B04", **FAST)
    with pytest.raises(UserError, match="one distinct, non-empty name per band"):
        prepare("named3", out=tmp_path / "out", src=src, val_frac=0, band_names="B02,B02,B04,B08", **FAST)


def test_jpeg_datasets_say_so_in_the_manifest_and_refuse_band_names(tiny_data, tiny_folder, tmp_path):
    m = load_manifest(tiny_data)
    assert (m.image_format, m.bands, m.dtype, m.band_names) == ("jpeg", 3, "uint8", ["red", "green", "blue"])
    assert m.value_range is None and m.percentiles is None and 50 < m.mean[0] < 200
    with pytest.raises(UserError, match="--band-names names the bands of rasters; these files are 8-bit images"):
        prepare("t", out=tmp_path, src=tiny_folder, band_names="r,g,b", **FAST)


def test_raster_members_of_a_zip_archive(tmp_path):
    rng = np.random.default_rng(8)
    refs = {}
    with zipfile.ZipFile(tmp_path / "s2.zip", "w") as zf:
        for name in ("a", "b"):
            for k in range(3):
                chw = rng.integers(0, 4096, (13, 8, 8)).astype(np.uint16)
                buf = io.BytesIO()
                tifffile.imwrite(buf, chw, photometric="minisblack", planarconfig="separate", compression="lzw")
                zf.writestr(f"wrap/{name}/{k}.tif", buf.getvalue())
                refs[f"wrap/{name}/{k}.tif"] = np.moveaxis(chw, 0, -1)
    out = prepare("zipped", out=tmp_path / "out", src=tmp_path / "s2.zip", val_frac=0, **FAST)
    assert load_manifest(out).bands == 13
    assert all(np.array_equal(arr, refs[key]) for key, arr in _stored(out).items())


def test_the_embedded_s2_target_is_a_13_band_12_bit_raster_dataset(tmp_path):
    out = prepare("s2-target", out=tmp_path, num_images=48, image_size=16, val_frac=0.25, **FAST)
    m = load_manifest(out)
    assert (m.image_format, m.bands, m.dtype, m.band_names) == ("raster", 13, "uint16", S2)
    assert all(0 <= lo <= hi <= 4095 for lo, hi in m.value_range)
    _statistics_match(out, m)
    _all_readers_agree(out)


def test_a_jpeg_only_source_is_never_surveyed(tiny_folder, tmp_path, monkeypatch):
    """Files named .jpg (etc.) are read once, by the conversion pass, exactly as before rasters."""
    from dataprep.sources import FileSource

    jpegs = tmp_path / "src"
    for path in sorted(tiny_folder.rglob("*.jpg"))[:12]:
        (jpegs / path.parent.name).mkdir(parents=True, exist_ok=True)
        (jpegs / path.parent.name / path.name).write_bytes(path.read_bytes())

    def no_survey(self, i):
        raise AssertionError("a JPEG dataset was surveyed")

    monkeypatch.setattr(FileSource, "header", no_survey)
    out = prepare("jpegs", out=tmp_path / "out", src=jpegs, formats="wds", val_frac=0, **FAST)
    assert load_manifest(out).image_format == "jpeg"


def test_a_constant_band_is_warned_about(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(2):
            np.save(tmp_path / "src" / name / f"{k}.npy", np.dstack([np.full((4, 4), 3, np.uint16),
                                                                    np.full((4, 4), k, np.uint16)]))
    prepare("flat", out=tmp_path / "out", src=tmp_path / "src", val_frac=0, band_names="cirrus,b", **FAST)
    assert "warning: cirrus holds one value (3) over the whole train split: its std is 0" in capsys.readouterr().err


def test_embedding_a_folder_reads_the_kind_of_the_backbones_data_and_skips_the_rest(tmp_path):
    from fasthpt.image_folder import UNUSABLE, EvalImages, list_images

    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((8, 8), 3000, np.uint16)).save(tmp_path / "c" / "deep.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c" / "rgb.png")
    source = list_images(tmp_path)
    images = EvalImages(source, res=8)  # 8-bit data (the default)
    assert [images[(0, i)][1] for i in range(len(source))] == [UNUSABLE, 0]
    assert images.reason(0) == "a uint16 raster of 1 band: the backbone reads 8-bit images, as its data holds them"
    images = EvalImages(source, res=8, kind=rr.Kind(1, "uint16"))  # 16-bit gray data, as X-rays are
    (deep, label), (_, other) = images[(0, 0)], images[(0, 1)]
    assert label == 0 and deep.dtype == torch.float32 and deep.shape == (1, 8, 8) and torch.all(deep == 3000)
    assert other == UNUSABLE
    assert images.reason(1) == "an 8-bit image: the backbone reads uint16 rasters of 1 band, as its data holds them"


def test_probing_an_n_band_tiff_with_pillow_logs_nothing(caplog):
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((13, 8, 8), np.uint16), photometric="minisblack", planarconfig="separate")
    with caplog.at_level("WARNING"):
        assert rr.kind_of(buf.getvalue()).kind == rr.Kind(13, "uint16")
        assert isinstance(rr.decode(buf.getvalue()), rr.Raster)
    assert caplog.records == []  # Pillow's "More samples per pixel than can be decoded" reached users' stderr
