"""`fasthpt export`: each format loads where it claims to and gives the backbone's features.

Tolerance for the compiled formats (TorchScript, ONNX through onnxruntime): fp32 features within
1e-4 absolute + 1e-4 relative of the PyTorch backbone's; the state_dict formats must match exactly.
"""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import RES, assert_one_line, normalise, run_cli

from fasthpt.errors import UserError
from fasthpt.export import export

TOL = dict(atol=1e-4, rtol=1e-4)


def images_u8(n: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def reference(model, x_u8, norm) -> torch.Tensor:
    with torch.no_grad():
        return model(normalise(x_u8, norm["mean"], norm["std"]))


def test_torchvision_export_loads_strict_and_records_its_run(run_dir, r18, tmp_path, capsys):
    import torchvision

    code, out, _ = run_cli(capsys, "export", run_dir, "--to", "torchvision", "--out", tmp_path / "r18.pth")
    assert code == 0 and "wrote" in out
    record = json.loads((tmp_path / "r18.json").read_text())
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()  # the documented snippet
    model.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True), strict=True)
    x = images_u8(2, RES)
    norm = record["normalisation"]
    assert torch.equal(reference(model.eval(), x, norm), reference(r18[0], x, norm))
    head = torchvision.models.resnet18(num_classes=7)  # a classifier: only its new head is missing
    missing = head.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True), strict=False)
    assert sorted(missing.missing_keys) == ["fc.bias", "fc.weight"] and not missing.unexpected_keys

    from fasthpt.manifest import load_manifest

    manifest = load_manifest(record["run"]["data"])
    assert record["normalisation"]["mean"] == manifest.mean and record["normalisation"]["std"] == manifest.std
    assert record["res"] == RES and record["arch"] == "resnet18" and record["format"] == "torchvision"
    assert record["run"]["iterations"] == 30 and record["run"]["base"] == "torchvision:resnet18"
    assert record["run"]["knn_monitor"] == {"step": 30, "acc": 0.5}
    assert [r["top1"] for r in record["results"]] == [0.75]  # the other backbone's result is not this one's


def test_timm_export_has_timms_keys_and_loads_with_the_documented_call(r18, tmp_path):
    timm = pytest.importorskip("timm", reason="timm is a test-only dependency")
    record = export(str(r18[1]), "timm", tmp_path / "r18.pth", res=RES, mean="120,110,100", std="60,50,40")
    state = torch.load(tmp_path / "r18.pth", weights_only=True)
    assert set(state) == set(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict())
    overlay = dict(file=str(tmp_path / "r18.pth"), **record["timm_pretrained_cfg"])  # the documented call
    model = timm.create_model("resnet18", pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    assert model.pretrained_cfg["mean"] == pytest.approx((120 / 255, 110 / 255, 100 / 255))
    x = images_u8(2, RES)
    torch.testing.assert_close(reference(model.eval(), x, record["normalisation"]),
                               reference(r18[0], x, record["normalisation"]), atol=0, rtol=0)


def test_torchscript_takes_uint8_and_float_images_of_any_size(r18, tmp_path):
    record = export(str(r18[1]), "torchscript", tmp_path / "r18.pt", res=RES, mean="120,110,100", std="60,50,40")
    extra = {"fasthpt.json": ""}
    scripted = torch.jit.load(str(tmp_path / "r18.pt"), _extra_files=extra)
    assert json.loads(extra["fasthpt.json"])["backbone_sha256"] == record["backbone_sha256"]
    for side in (RES, RES + 8):
        x = images_u8(3, side)
        expected = reference(r18[0], x, record["normalisation"])
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), expected, **TOL)
            torch.testing.assert_close(scripted(x.float() / 255), expected, **TOL)


@pytest.mark.parametrize("input_dtype", ["float", "uint8"])
def test_onnx_runs_in_onnxruntime_and_matches_the_backbone(r18, tmp_path, input_dtype):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test-only dependency")
    path = tmp_path / f"r18-{input_dtype}.onnx"
    record = export(str(r18[1]), "onnx", path, res=RES, mean="120,110,100", std="60,50,40", input_dtype=input_dtype)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for n, side in ((3, RES), (1, RES + 16)):  # batch and side are dynamic
        x = images_u8(n, side, seed=side)
        feed = x.numpy() if input_dtype == "uint8" else (x.float() / 255).numpy()
        (features,) = session.run(["features"], {"images": feed})
        assert features.shape == (n, 512)
        torch.testing.assert_close(torch.from_numpy(features), reference(r18[0], x, record["normalisation"]), **TOL)


def test_resnet_tiny_goes_to_torchscript_but_not_torchvision(tiny_backbone, tmp_path, capsys):
    for to in ("torchvision", "timm"):
        code, _, err = run_cli(capsys, "export", tiny_backbone, "--to", to, "--res", RES, "--mean", "1,1,1",
                               "--std", "1,1,1")
        assert_one_line(code, err, "resnet_tiny", "torchscript")
    record = export(str(tiny_backbone), "torchscript", tmp_path / "tiny.pt", res=RES, mean="1,1,1", std="2,2,2")
    assert record["num_features"] == 256 and (tmp_path / "tiny.pt").is_file()


def test_missing_or_wrong_backbone_is_one_line(r18, tmp_path, capsys):
    cases = [
        ((tmp_path / "nope.pt", "--to", "onnx", "--res", RES), ("not found", "nope.pt")),
        ((r18[1], "--to", "onnx", "--arch", "resnet50", "--res", RES), ("resnet18", "resnet50")),
        ((tmp_path, "--to", "onnx"), ("has no backbone.pt", "not a fasthpt run folder")),
        ((r18[1], "--to", "timm", "--mean", "1,1,1", "--std", "1,1,1"), ("--res",)),  # timm's input_size
        ((r18[1], "--to", "onnx", "--res", RES), ("--norm-data", "--mean")),
        ((r18[1], "--to", "onnx", "--res", RES, "--mean", "1,2", "--std", "1,1,1"), ("--mean 1,2", "three")),
        ((r18[1], "--to", "onnx", "--res", RES, "--mean", "1,1,1", "--std", "1,1,1", "--out", tmp_path / "x.pt"),
         (".onnx",)),
    ]
    for argv, words in cases:
        code, _, err = run_cli(capsys, "export", *argv)
        assert_one_line(code, err, *words)


def test_not_a_checkpoint_is_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "export", junk, "--to", "torchscript", "--res", RES)
    assert_one_line(code, err, "junk.pt")


def test_existing_output_is_kept_without_force(r18, tmp_path):
    out = tmp_path / "r18.pt"
    opts = dict(res=RES, mean="1,1,1", std="1,1,1")
    export(str(r18[1]), "torchscript", out, **opts)
    before = out.read_bytes()
    with pytest.raises(UserError, match="--force"):
        export(str(r18[1]), "torchscript", out, **opts)
    assert out.read_bytes() == before
    export(str(r18[1]), "torchscript", out, force=True, **{**opts, "std": "2,2,2"})
    assert json.loads((tmp_path / "r18.json").read_text())["normalisation"]["std"] == [2.0, 2.0, 2.0]


def test_interrupted_export_leaves_nothing(r18, tmp_path, monkeypatch):
    import fasthpt.export as ex

    def half_written(module, path, record, input_dtype):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setitem(ex.WRITERS, "onnx", half_written)
    with pytest.raises(KeyboardInterrupt):
        export(str(r18[1]), "onnx", tmp_path / "r18.onnx", res=RES, mean="1,1,1", std="1,1,1")
    assert list(tmp_path.iterdir()) == []


def test_default_output_goes_beside_the_backbone(run_dir, tmp_path):
    record = export(str(run_dir), "onnx", input_dtype="uint8")
    assert record["path"] == str(run_dir / "backbone.uint8.onnx")
    assert record["record_path"] == str(run_dir / "backbone.uint8.json")


def test_staged_run_records_every_stage(r18, tiny_data, tmp_path):
    from export_helpers import write_run

    from fasthpt.provenance import read_run

    root = tmp_path / "chain"
    write_run(root, r18[1], "data/elsewhere", stages="[{name: source, data: data/a}, {name: target, data: "
              f"{tiny_data}, mode: bn}}]")
    write_run(root / "source", r18[1], "data/a", steps=(5, 10))
    write_run(root / "target", r18[1], tiny_data, steps=(7,), **{"hpt.mode": "bn"})
    info = read_run(root)
    assert [s["name"] for s in info["stages"]] == ["source", "target"]
    assert info["iterations"] == 17 and info["data"] == str(tiny_data) and info["stages"][1]["mode"] == "bn"


def test_trust_checkpoint_is_passed_on(r18, tmp_path, capsys):
    from export_helpers import Note

    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": r18[0].state_dict(), "note": Note()}, path)
    opts = ("--to", "torchscript", "--res", RES, "--mean", "1,1,1", "--std", "1,1,1", "--out", tmp_path / "t.pt")
    code, _, err = run_cli(capsys, "export", path, *opts)
    assert_one_line(code, err, "refused", "--trust-checkpoint")
    code, out, _ = run_cli(capsys, "export", path, *opts, "--trust-checkpoint")
    assert code == 0 and (tmp_path / "t.pt").is_file()
