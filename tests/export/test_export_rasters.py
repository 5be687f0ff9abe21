"""`fasthpt embed` and `fasthpt export` of N-band data: a folder of 13-band uint16 GeoTIFFs is
embedded with the loaders' raster eval view and per-band standardisation (files of another kind
skipped and listed); a 13-band backbone goes to every format with 13 input channels, per-band
normalisation folded into TorchScript and ONNX, and a record that names the bands, their dtype,
their mean/std and conv1's rule. Tolerances as in test_export.py."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from export_helpers import S2, assert_one_line, perturbed, run_cli, write_geotiff, write_run

from fasthpt.embed import embed
from fasthpt.export import export

tifffile = pytest.importorskip("tifffile")
RES = 16  # the TIFFs are 20 x 24: the eval view resizes the shorter side to 18 and centre-crops 16
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def s2_tiffs(tmp_path_factory):
    """2 classes x 4 GeoTIFFs, 13 uint16 bands stored bands first, band c near 300 c."""
    root = tmp_path_factory.mktemp("s2")
    rng = np.random.default_rng(0)
    for label, name in enumerate(("forest", "lake")):
        (root / name).mkdir()
        for k in range(4):
            chw = np.arange(13)[:, None, None] * 300 + 200 * label + rng.integers(0, 400, (13, 20, 24))
            write_geotiff(root / name / f"{k}.tif", chw.astype(np.uint16), S2)
    return root


@pytest.fixture(scope="module")
def s2_data(tmp_path_factory, s2_tiffs):
    from dataprep import prepare

    return prepare("s2", out=tmp_path_factory.mktemp("s2_data"), src=s2_tiffs, val_frac=0.25, test_frac=0.25,
                   formats="wds", workers=1, progress=False)


@pytest.fixture(scope="module")
def s2_run(tmp_path_factory, tiny_backbone, s2_data):
    """A run as pretraining leaves it: an RGB resnet_tiny base adapted to the 13 bands by the rule
    pretraining uses (its LoadReport in base.json), its data in data.json."""
    from fasthpt.fileio import atomic_write_json
    from fasthpt.models.backbones import BASE_REPORT, load_backbone, save_backbone
    from fasthpt.provenance import record_data

    model, report = load_backbone(str(tiny_backbone), in_chans=13, band_names=S2)
    path = save_backbone(model, tmp_path_factory.mktemp("bb") / "backbone.pt")
    root = write_run(tmp_path_factory.mktemp("runs") / "s2-hpt", path, s2_data, res=RES,
                     **{"model.arch": "resnet_tiny"})
    atomic_write_json(root / BASE_REPORT, dataclasses.asdict(report))
    record_data(root, str(s2_data))
    return root, model.eval()


def manifest_of(data):
    from fasthpt.manifest import load_manifest

    return load_manifest(data)


def standardised(x: torch.Tensor, data) -> torch.Tensor:
    """(x - mean_c) / std_c in stored units, written out."""
    m = manifest_of(data)
    return (x.float() - torch.tensor(m.mean).view(1, -1, 1, 1)) / torch.tensor(m.std).view(1, -1, 1, 1)


def eval_view(path) -> torch.Tensor:
    """The eval view of one TIFF written with torchvision's transforms: 13 x RES x RES float32."""
    import torchvision.transforms as T

    x = torch.from_numpy(tifffile.imread(path).astype(np.float32))  # 13 x H x W as stored
    view = T.Compose([T.Resize(round(RES * 256 / 224), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                      T.CenterCrop(RES)])
    return view(x)


def features(model, x):
    with torch.no_grad():
        return model(x)


def uint16_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """Values over the whole uint16 range (above 32767 too: an int16 reading would fail)."""
    return np.random.default_rng(seed).integers(0, 65536, (n, 13, side, side)).astype(np.uint16)


@pytest.fixture
def odd_folder(s2_tiffs, tmp_path):
    """The 8 GeoTIFFs plus a 12-band one, a 13-band float .npy and an 8-bit PNG."""
    from PIL import Image

    root = shutil.copytree(s2_tiffs, tmp_path / "tiles")
    write_geotiff(root / "forest" / "twelve.tif", np.ones((12, 20, 24), np.uint16), S2[:12])
    np.save(root / "lake" / "float.npy", np.ones((20, 24, 13), np.float32))
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "lake" / "rgb.png")
    return root


def test_a_folder_of_13_band_tiffs_embeds_as_the_loaders_read_it(s2_run, s2_data, odd_folder, tmp_path, capsys):
    run, model = s2_run
    code, out, err = run_cli(capsys, "embed", "--backbone", run, "--images", odd_folder, "--out", tmp_path / "f.npy",
                             "--workers", 0, "--batch-size", 3, "--no-progress")
    assert code == 0 and "wrote 8 x 256 features" in out and "(3 skipped)" in out, err
    assert "skipped 3 unusable files" in err and "More samples per pixel" not in err  # Pillow's probe is quiet
    for line in ("forest/twelve.tif: a uint16 raster of 12 bands: the backbone reads uint16 rasters of 13 bands",
                 "lake/float.npy: a float32 raster of 13 bands: the backbone reads uint16 rasters of 13 bands",
                 "lake/rgb.png: an 8-bit image: the backbone reads uint16 rasters of 13 bands"):
        assert line in err
    feats = np.load(tmp_path / "f.npy")
    record = json.loads((tmp_path / "f.json").read_text())
    assert feats.shape == (8, 256) and np.isfinite(feats).all() and record["skipped_count"] == 3
    assert record["input"] == {"image_format": "raster", "bands": 13, "dtype": "uint16", "band_names": S2}
    assert record["normalisation"]["mean"] == manifest_of(s2_data).mean and record["conv1"]["rule"] == "rgb"
    assert record["dtype"] == "float32"  # the features' dtype
    expected = features(model, standardised(torch.stack([eval_view(odd_folder / p) for p in record["paths"]]),
                                            s2_data))
    torch.testing.assert_close(torch.from_numpy(feats), expected, atol=1e-5, rtol=1e-5)
    # the prepared data through the loaders gives the same features for the same files
    loaded = embed(str(run), tmp_path / "d.npy", data=str(s2_data), backend="torch", workers=0, progress=False)
    by_path = dict(zip(loaded["paths"], np.load(tmp_path / "d.npy")))
    assert sorted(by_path) == sorted(record["paths"])
    np.testing.assert_allclose(np.stack([by_path[p] for p in record["paths"]]), feats, atol=1e-5, rtol=1e-5)


def test_a_bare_13_band_checkpoint_takes_its_bands_dtype_and_normalisation_from_norm_data(
        s2_run, s2_data, s2_tiffs, tmp_path, capsys):
    bare = s2_run[0] / "backbone.pt"
    argv = ("embed", "--backbone", bare, "--images", s2_tiffs, "--res", RES, "--out", tmp_path / "f.npy",
            "--workers", 0, "--no-progress")
    code, _, err = run_cli(capsys, *argv)
    assert_one_line(code, err, "a bare checkpoint does not say", "--norm-data DIR", "for its 13 bands")
    assert "--mean" not in err
    code, _, err = run_cli(capsys, *argv, "--mean", "1,1,1", "--std", "1,1,1")
    assert_one_line(code, err, "takes 13 input bands", "--mean/--std is for 8-bit RGB images", "--norm-data DIR")
    code, out, err = run_cli(capsys, *argv, "--norm-data", s2_data)
    assert code == 0 and "wrote 8 x 256" in out, err
    record = json.loads((tmp_path / "f.json").read_text())
    assert record["normalisation"]["std"] == manifest_of(s2_data).std and record["conv1"] is None


def test_embedding_13_band_data_adapts_an_rgb_backbone_as_eval_does(tiny_backbone, s2_data, tmp_path, capsys):
    record = embed(str(tiny_backbone), tmp_path / "f.npy", data=str(s2_data), res=RES, backend="torch", workers=0,
                   progress=False)
    assert "conv1 rgb: the base's R, G, B filters to R=B04, G=B03, B=B02" in capsys.readouterr().err
    assert record["count"] == 8 and record["input"]["bands"] == 13 and record["conv1"]["rule"] == "rgb"
    assert np.isfinite(np.load(tmp_path / "f.npy")).all()


def _common_fields(record, data):
    m = manifest_of(data)
    assert (record["bands"], record["band_names"], record["dtype"], record["image_format"]) == (13, S2, "uint16",
                                                                                                "raster")
    norm = record["normalisation"]
    assert norm["mean"] == m.mean and norm["std"] == m.std and len(norm["mean"]) == 13
    assert norm["units"] == "the stored uint16 values (the files' own)" and "mean_0_1" not in norm
    assert record["conv1"]["rule"] == "rgb" and "R=B04, G=B03, B=B02" in record["conv1"]["how"]
    assert record["input"]["shape"] == ["N", 13, "H", "W"] and record["input"]["band_names"] == S2
    assert record["preprocess"].startswith("every band, in the values as stored")


def test_a_13_band_run_exports_to_safetensors_torchscript_and_onnx(s2_run, s2_data, tmp_path):
    from safetensors.torch import load_file

    from fasthpt.models.backbones import backbone_state

    run, model = s2_run
    record = export(str(run), "safetensors", tmp_path / "m.safetensors")
    _common_fields(record, s2_data)
    state = load_file(tmp_path / "m.safetensors")
    assert state["conv1.weight"].shape == (32, 13, 3, 3)
    assert all(torch.equal(state[k], v) for k, v in backbone_state(model).items())

    record = export(str(run), "torchscript", tmp_path / "ts.pt")
    _common_fields(record, s2_data)
    assert record["input"]["dtype"] == ["uint16", "float32"] and record["input"]["normalisation"] == "folded in"
    scripted = torch.jit.load(str(tmp_path / "ts.pt"))
    for side in (RES, RES + 8):
        x = torch.from_numpy(uint16_images(2, side, seed=side))
        expected = features(model, standardised(x, s2_data))
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), expected, **TOL)  # uint16 as stored
            torch.testing.assert_close(scripted(x.float()), expected, **TOL)  # float32 in the same units


@pytest.mark.parametrize("input_dtype", ["float", "uint16"])
def test_onnx_with_13_input_channels_matches_the_backbone_in_onnxruntime(s2_run, s2_data, input_dtype):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test-only dependency")
    run, model = s2_run
    record = export(str(run), "onnx", input_dtype=input_dtype, force=True)
    name = "backbone.onnx" if input_dtype == "float" else "backbone.uint16.onnx"
    assert record["path"] == str(run / name)  # beside the backbone, named by its input
    _common_fields(record, s2_data)
    assert record["input"]["dtype"] == ["float32" if input_dtype == "float" else "uint16"]
    session = ort.InferenceSession(record["path"], providers=["CPUExecutionProvider"])
    (images,) = session.get_inputs()
    assert images.name == "images" and images.type == f"tensor({'float' if input_dtype == 'float' else 'uint16'})"
    for n, side in ((3, RES), (1, RES + 8)):  # batch and side are dynamic
        x = uint16_images(n, side, seed=n)
        feed = x if input_dtype == "uint16" else x.astype(np.float32)  # float: the stored values as they are
        (feats,) = session.run(["features"], {"images": feed})
        assert feats.shape == (n, 256)
        expected = features(model, standardised(torch.from_numpy(x.astype(np.int64)), s2_data))
        torch.testing.assert_close(torch.from_numpy(feats), expected, **TOL)


@pytest.mark.parametrize("bad", ["uint8", "int16"])
def test_an_onnx_input_that_cannot_hold_the_data_is_refused_saying_what_to_use(s2_run, tmp_path, capsys, bad):
    code, _, err = run_cli(capsys, "export", s2_run[0], "--to", "onnx", "--input", bad, "--out", tmp_path / "x.onnx")
    assert_one_line(code, err, f"--input {bad}: the backbone's data is uint16 rasters of 13 bands",
                    "use --input uint16 (the values as stored) or --input float (float32, the stored uint16 values")
    assert not list(tmp_path.iterdir())


def test_input_choices_follow_the_datas_dtype():
    from fasthpt.errors import UserError
    from fasthpt.export import check_input
    from fasthpt.provenance import Norm

    reflectance = Norm([0.1] * 4, [0.05] * 4, "m", bands=4, dtype="float32", band_names=None, raster=True)
    check_input("float", reflectance)
    with pytest.raises(UserError, match=r"--input uint16: .* float32 rasters of 4 bands; use --input float "
                                        r"\(float32, the stored float32 values as they are\)$"):
        check_input("uint16", reflectance)
    eight_bit = Norm([120.0] * 3, [60.0] * 3, "m")
    check_input("uint8", eight_bit)
    with pytest.raises(UserError, match=r"8-bit RGB images; use --input uint8 .* --input float \(float32, 0..1\)$"):
        check_input("uint16", eight_bit)


def test_a_13_band_resnet18_loads_in_torchvision_and_timm(s2_data, tmp_path):
    import torchvision

    from fasthpt.models.backbones import save_backbone

    timm = pytest.importorskip("timm", reason="timm is a test-only dependency")
    model = perturbed("resnet18", in_chans=13)
    bare = save_backbone(model, tmp_path / "r18-13.pt")
    x = standardised(torch.from_numpy(uint16_images(2, RES)), s2_data)
    record = export(str(bare), "torchvision", tmp_path / "tv.pth", norm_data=str(s2_data))
    assert record["bands"] == 13 and record["normalisation"]["mean"] == manifest_of(s2_data).mean
    tv = torchvision.models.resnet18()
    tv.fc = torch.nn.Identity()
    tv.conv1 = torch.nn.Conv2d(13, 64, 7, 2, 3, bias=False)  # the documented N-band snippet
    tv.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=True)
    assert torch.equal(features(tv.eval(), x), features(model, x))

    record = export(str(bare), "timm", tmp_path / "timm.pth", res=RES, norm_data=str(s2_data))
    cfg = record["timm_pretrained_cfg"]
    assert cfg["input_size"] == (13, RES, RES) and cfg["mean"] == tuple(manifest_of(s2_data).mean)  # stored units
    overlay = dict(file=str(tmp_path / "timm.pth"), **cfg)
    tm = timm.create_model("resnet18", pretrained=True, num_classes=0, in_chans=record["bands"],
                           pretrained_cfg_overlay=overlay)
    assert torch.equal(features(tm.eval(), x), features(model, x))


def test_a_backbone_and_a_normalisation_of_other_bands_are_refused(s2_run, s2_data, tiny_backbone, tmp_path,
                                                                    capsys):
    bare = s2_run[0] / "backbone.pt"
    out = ("--out", tmp_path / "x.onnx")
    code, _, err = run_cli(capsys, "export", bare, "--to", "onnx", "--mean", "1,1,1", "--std", "1,1,1", *out)
    assert_one_line(code, err, "takes 13 input bands but the normalisation from --mean/--std is for 8-bit RGB images")
    code, _, err = run_cli(capsys, "export", bare, "--to", "onnx", *out)
    assert_one_line(code, err, "a bare checkpoint does not say its normalisation", "for its 13 bands")
    assert "--mean" not in err
    code, _, err = run_cli(capsys, "export", tiny_backbone, "--to", "onnx", "--norm-data", s2_data, *out)
    assert_one_line(code, err, "takes 3 input bands", "is for uint16 rasters of 13 bands")
    assert not list(tmp_path.iterdir())


def test_a_data_json_that_predates_the_kind_of_data(s2_run, s2_data, tmp_path, capsys):
    """data.json written before it recorded bands and dtype: the unchanged manifest says them;
    once the data is gone, 13 means cannot be guessed: refused in one line."""
    from fasthpt.provenance import record_data

    data = shutil.copytree(s2_data, tmp_path / "data")
    run = shutil.copytree(s2_run[0], tmp_path / "run")
    record_data(run, str(data))
    old = {k: v for k, v in json.loads((run / "data.json").read_text()).items()
           if k not in ("bands", "dtype", "band_names", "image_format")}
    (run / "data.json").write_text(json.dumps(old))
    record = export(str(run), "onnx", tmp_path / "a.onnx")
    assert (record["bands"], record["dtype"], record["band_names"]) == (13, "uint16", S2)
    shutil.rmtree(data)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "export", run, "--to", "onnx", "--out", tmp_path / "b.onnx")
    assert_one_line(code, err, "does not say the dtype of its 13 bands", "--norm-data DIR")


def test_an_rgb_export_records_its_kind_as_before(r18, tmp_path):
    record = export(str(r18[1]), "torchscript", tmp_path / "r18.pt", mean="120,110,100", std="60,50,40")
    assert (record["bands"], record["dtype"], record["image_format"]) == (3, "uint8", "jpeg")
    assert record["band_names"] == ["red", "green", "blue"] and record["conv1"] is None
    assert record["normalisation"]["mean_0_1"] == pytest.approx([120 / 255, 110 / 255, 100 / 255])
    assert record["input"]["dtype"] == ["uint8", "float32"] and record["preprocess"].startswith("RGB;")


def test_float_reflectance_embeds_and_exports_in_its_stored_units(tmp_path, capsys):
    """4-band float32 reflectance (0..0.4), interleaved TIFFs: a file with NaN is skipped and listed;
    float inputs of TorchScript and ONNX are the reflectances themselves (no /255 convention)."""
    from dataprep import prepare
    from fasthpt.models.backbones import save_backbone

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test-only dependency")
    rng = np.random.default_rng(3)
    for label, name in enumerate(("dry", "wet")):
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(3):
            hwc = (0.05 + 0.1 * label + rng.uniform(0, 0.3, (20, 24, 4))).astype(np.float32)
            tifffile.imwrite(tmp_path / "src" / name / f"{k}.tif", hwc, photometric="minisblack", planarconfig="contig")
    data = prepare("refl", out=tmp_path / "data", src=tmp_path / "src", val_frac=0.34, test_frac=0, formats="wds",
                   workers=1, progress=False)
    assert (manifest_of(data).dtype, manifest_of(data).bands) == ("float32", 4)
    bad = np.full((20, 24, 4), 0.2, np.float32)
    bad[0, 0, 1] = np.nan
    tifffile.imwrite(tmp_path / "src" / "wet" / "cloud.tif", bad, photometric="minisblack", planarconfig="contig")
    model = perturbed("resnet_tiny", in_chans=4)
    bare = save_backbone(model, tmp_path / "refl.pt")
    record = embed(str(bare), tmp_path / "f.npy", images=str(tmp_path / "src"), res=RES, norm_data=str(data),
                   workers=0, progress=False)
    assert record["count"] == 6 and record["input"]["dtype"] == "float32"
    assert record["skipped"] == [{"path": "wet/cloud.tif", "reason": "1 NaN or infinite values: the network takes "
                                  "finite values only (fill or mask them in the files first)"}]
    assert np.isfinite(np.load(tmp_path / "f.npy")).all()

    x = torch.from_numpy(rng.uniform(0, 0.4, (2, 4, RES, RES)).astype(np.float32))
    m = manifest_of(data)
    expected = features(model, (x - torch.tensor(m.mean).view(1, -1, 1, 1)) / torch.tensor(m.std).view(1, -1, 1, 1))
    record = export(str(bare), "onnx", tmp_path / "refl.onnx", norm_data=str(data))
    assert record["input"]["dtype"] == ["float32"]
    assert "the stored float32 values as they are" in record["input"]["values"]
    session = ort.InferenceSession(record["path"], providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0]), expected, **TOL)
    export(str(bare), "torchscript", tmp_path / "refl-ts.pt", norm_data=str(data))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "refl-ts.pt"))(x), expected, **TOL)


def test_signed_16_bit_data_exports_to_onnx_with_int16_input(tmp_path):
    from dataprep import prepare
    from fasthpt.models.backbones import save_backbone

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test-only dependency")
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for k in range(3):
            np.save(tmp_path / "src" / name / f"{k}.npy", rng.integers(-3000, 3000, (20, 24, 2)).astype(np.int16))
    data = prepare("signed", out=tmp_path / "data", src=tmp_path / "src", val_frac=0.34, test_frac=0, formats="wds",
                   workers=1, progress=False)
    model = perturbed("resnet_tiny", in_chans=2)
    bare = save_backbone(model, tmp_path / "signed.pt")
    record = export(str(bare), "onnx", tmp_path / "signed.onnx", norm_data=str(data), input_dtype="int16")
    assert (record["dtype"], record["input"]["dtype"]) == ("int16", ["int16"])
    x = rng.integers(-32768, 32768, (2, 2, RES, RES)).astype(np.int16)
    session = ort.InferenceSession(record["path"], providers=["CPUExecutionProvider"])
    (feats,) = session.run(["features"], {"images": x})
    torch.testing.assert_close(torch.from_numpy(feats), features(model, standardised(torch.from_numpy(x), data)),
                               **TOL)
