"""Helpers shared by the export and embed tests (a module, so that test files can import them)."""

from __future__ import annotations

import json

import torch

RES = 32  # small enough for resnet18 on 2 CPU cores


def perturbed(arch: str, seed: int = 0, in_chans: int = 3):
    from fasthpt.models.backbones import build_backbone

    torch.manual_seed(seed)
    model = build_backbone(arch, in_chans)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def write_run(root, backbone_path, data, steps=(10, 20, 30), res=RES, **extra):
    """A finished run folder as fasthpt.train leaves it (no checkpoints needed here)."""
    import shutil

    from fasthpt.config import load_config, save_config

    cfg = load_config(None, [f"name={root.name}", f"run_dir={root.parent}", f"data.path={data}",
                             f"data.res={res}", "model.arch=resnet18", "hpt.base=torchvision:resnet18",
                             *[f"{k}={v}" for k, v in extra.items()]])
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    rows = [{"step": s, "loss/train/total": 1.0 / s} for s in steps] + [{"step": steps[-1], "knn/acc": 0.5}]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 99, "torn')
    shutil.copyfile(backbone_path, root / "backbone.pt")
    return root


def normalise(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """The loaders' normalisation, written out: (x - mean) / std in 0..255 units."""
    shape = (1, 3, 1, 1)
    return (images_u8.float() - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of `fasthpt ARGV`."""
    from fasthpt.cli import main

    code = main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def assert_one_line(code, err, *words):
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


class Note:
    """A pickled object that torch's weights-only reader refuses (it is not a tensor or a container)."""

    text = "trained on my laptop"


# Sentinel-2's 13 bands, as GeoTIFFs name them (B04, B03, B02: red, green, blue)
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def write_geotiff(path, chw, names=None):
    """A GeoTIFF as GDAL writes them: bands first (planar), band descriptions in GDAL_METADATA."""
    import tifffile

    items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>'
                    for i, n in enumerate(names or []))
    extratags = [(42112, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True)] if names else []
    tifffile.imwrite(path, chw, photometric="minisblack", planarconfig="separate", compression="zlib",
                     extratags=extratags)
    return path
