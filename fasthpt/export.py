"""`fasthpt export RUN_OR_BACKBONE --to torchvision|timm|safetensors|torchscript|onnx [--out FILE]`.

Every export writes FILE and FILE's record beside it (same name, ``.json``): where the backbone
came from (run, base, data, iterations, kNN monitor and `fasthpt eval --json` results of the same
weights), its sha256, the input resolution, the preprocessing and the normalisation.

- torchvision: the backbone state_dict (torchvision key names, no ``fc``), for resnet18 / resnet50::

      m = torchvision.models.resnet50()
      m.fc = torch.nn.Identity()                       # features; or nn.Linear(2048, K) + strict=False
      m.load_state_dict(torch.load(FILE, weights_only=True), strict=True)
      # preprocess: record["preprocess"], Normalize(record["normalisation"]["mean_0_1"], ["std_0_1"])

- safetensors: the same tensors in the safetensors format (no pickle: nothing in it can run code),
  the record also in its metadata (``fasthpt``); any architecture, resnet_tiny included::

      m.load_state_dict(safetensors.torch.load_file(FILE), strict=True)

- timm: the same tensors: timm's ResNet (timm models/resnet.py) uses torchvision's module names
  (conv1, bn1, layer1-4, downsample.0/.1; classifier ``fc``), so one file serves both (the tests
  compare it with timm's own key list)::

      timm.create_model("resnet50", pretrained=True, num_classes=0,
                        pretrained_cfg_overlay=dict(file=FILE, **record["timm_pretrained_cfg"]))

- torchscript / onnx: backbone with the normalisation folded in: input ``images`` N x C x H x W
  (C = the data's bands: 3, RGB, for 8-bit images), already resized and center-cropped
  (record["preprocess"]; H = W = res is what it was trained at, any size runs); output
  ``features`` N x D, the globally pooled features. TorchScript takes the data's integer dtype or
  float; an ONNX file takes the dtype chosen with ``--input``.

Rasters (a run on `fasthpt prep`'s 12/16-bit, float or N-band data): every format takes the data's
bands (C input channels, conv1 as the run made it: record["conv1"], from its base.json); the
normalisation is per band in the values as stored (the files' own, no 0..1 scaling), and the
record names the bands, their dtype and their mean/std. ``--input`` says what an ONNX file takes:
``float`` (the default) float32 images, 0..1 for 8-bit image data and the stored values for
rasters; or the data's own integer dtype, the values as stored: ``uint8`` for 8-bit images,
``uint16`` / ``int16`` for rasters stored so. Any other integer dtype is refused in one line that
says which to use (an 8-bit ``uint8`` input cannot hold 12/16-bit levels, and a /255 folded for it
would be wrong for rasters). ``uint16`` needs the ``onnx`` package: torch's exporter has no uint16
tensors, so the graph is traced with int16 (the same width; its first operation casts to float)
and its input then declared uint16.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

from fasthpt import provenance as pv
from fasthpt.config import ARCH_NAMES
from fasthpt.errors import UserError

SUFFIX = {"torchvision": ".pth", "timm": ".pth", "safetensors": ".safetensors", "torchscript": ".pt",
          "onnx": ".onnx"}
WEIGHT_ARCHS = ("resnet18", "resnet50")  # resnet_tiny exists in neither torchvision nor timm
ONNX_OPSET = 17  # torch 2.7's exporter default (torch.onnx._constants.ONNX_DEFAULT_OPSET), pinned
# What each format uses of the input contract, and so asks for when the source does not say it:
# timm's pretrained_cfg holds both; torchscript and onnx fold the normalisation in (and run any
# size); plain weights use neither (the record then says what is known).
NEEDS = {"torchvision": (), "safetensors": (), "timm": ("res", "norm"), "torchscript": ("norm",), "onnx": ("norm",)}
ONNX_EXAMPLE_SIDE = 64  # the traced example's side when the resolution is unknown: the graph takes any size
INPUTS = ("float", "uint8", "uint16", "int16")  # --input: float32, or the data's stored integer dtype
STATE_DICTS = ("torchvision", "timm", "safetensors")


class Folded(nn.Module):
    """``backbone`` behind the loaders' normalisation: images -> N x D pooled features.

    Integer images go through exactly the loaders' arithmetic, (x - mean) / std per band in the
    data's units (fasthpt.data.torch_backend.TorchLoader: 0..255 for 8-bit images, the stored
    values for rasters); float images are taken in 0..1 for 8-bit image data (scaled by 255 first)
    and in the stored units for rasters (``float_scale`` 1)."""

    def __init__(self, backbone: nn.Module, norm: pv.Norm):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, norm.bands, 1, 1))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, norm.bands, 1, 1))
        self.float_scale = 1.0 if norm.raster else 255.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.is_floating_point():
            x = x * self.float_scale
        return self.backbone((x - self.mean) / self.std).flatten(1)


def folded(backbone: nn.Module, norm: pv.Norm) -> Folded:
    """A CPU, eval-mode copy (the caller's module is left as it was)."""
    return Folded(copy.deepcopy(backbone).cpu().float(), norm).eval()


def _weights(module: nn.Module, path: Path, record: dict, input_dtype: str) -> None:
    from fasthpt.models.backbones import save_backbone

    save_backbone(module, path)


def _safetensors(module: nn.Module, path: Path, record: dict, input_dtype: str) -> None:
    from safetensors.torch import save_file

    from fasthpt.models.backbones import backbone_state

    save_file(backbone_state(module), str(path), metadata={"format": "pt", "fasthpt": json.dumps(record, default=str)})


def _torchscript(module: nn.Module, path: Path, record: dict, input_dtype: str) -> None:
    scripted = torch.jit.script(folded(module, _norm(record)))
    torch.jit.save(scripted, str(path), _extra_files={"fasthpt.json": json.dumps(record, default=str)})


# --input -> the dtype the graph is traced with: torch's exporter has no uint16 tensors, so uint16
# is traced as int16 (same width) and the graph's input re-declared (_as_uint16)
_TRACED = {"float": torch.float32, "uint8": torch.uint8, "uint16": torch.int16, "int16": torch.int16}


def _onnx(module: nn.Module, path: Path, record: dict, input_dtype: str) -> None:
    res = record["res"] or ONNX_EXAMPLE_SIDE
    example = torch.zeros(1, record["bands"], res, res, dtype=_TRACED[input_dtype])
    with torch.no_grad():
        torch.onnx.export(
            folded(module, _norm(record)), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["images"], output_names=["features"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch"}},
        )
    if input_dtype == "uint16":
        _as_uint16(path)


def _as_uint16(path: Path) -> None:
    """Declare the graph's input uint16: exact, because its only use is the cast to float that
    begins Folded.forward (checked; ONNX's Cast takes uint16)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    users = [node for node in graph.node if "images" in node.input]
    to_float = lambda n: any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)  # noqa: E731
    if not users or not all(n.op_type == "Cast" and to_float(n) for n in users):
        raise RuntimeError("the traced graph does not begin by casting its input to float")  # a bug, not input
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT16
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _norm(record: dict) -> pv.Norm:
    n = record["normalisation"]
    return pv.Norm(n["mean"], n["std"], n["from"], n["bands"], n["dtype"], n["band_names"],
                   n["image_format"] == "raster")


WRITERS = {"torchvision": _weights, "timm": _weights, "safetensors": _safetensors, "torchscript": _torchscript,
           "onnx": _onnx}


def timm_cfg(record: dict) -> dict:
    """timm pretrained_cfg keys for this export (the eval crop 224/256; mean/std in 0..1 for 8-bit
    images, in the stored units for rasters, which timm's 0..1 image transforms do not read)."""
    from fasthpt.eval.common import CENTER_CROP_FRACTION

    res, n = record["res"], record["normalisation"]
    mean, std = (n["mean"], n["std"]) if n["image_format"] == "raster" else (n["mean_0_1"], n["std_0_1"])
    return {"mean": tuple(mean), "std": tuple(std), "input_size": (record["bands"], res, res),
            "crop_pct": CENTER_CROP_FRACTION, "interpolation": "bilinear", "num_classes": 0}


def default_out(source: pv.Source, to: str, input_dtype: str) -> Path:
    """Beside the source: runs/x/backbone.pt -> runs/x/backbone.{torchvision,timm}.pth,
    backbone.safetensors, backbone.torchscript.pt, backbone.onnx or backbone.<input dtype>.onnx."""
    spec = Path(source.backbone.source)
    base = spec.with_suffix("") if spec.is_file() else Path(str(spec).replace(":", "-"))
    tag = {"onnx": "" if input_dtype == "float" else f".{input_dtype}", "safetensors": ""}.get(to, "." + to)
    return base.with_name(f"{base.name}{tag}{SUFFIX[to]}")


def export(spec: str, to: str, out=None, *, arch=None, res=None, norm_data=None, mean=None, std=None,
           input_dtype: str = "float", results=(), force=False, trust=False, allow_missing=False) -> dict:
    """Write ``spec``'s backbone as ``to`` plus its record; returns the record (with ``file``)."""
    if to not in WRITERS:
        raise UserError(f"--to {to}: choose one of {', '.join(WRITERS)}")
    if input_dtype not in INPUTS:
        raise UserError(f"--input {input_dtype}: choose {', '.join(INPUTS)}")
    source = pv.resolve_source(spec, arch=arch, trust=trust, allow_missing=allow_missing)
    bb = source.backbone
    if to in ("torchvision", "timm") and bb.arch not in WEIGHT_ARCHS:
        raise UserError(f"{bb.source} is a {bb.arch}, which {to} does not have; "
                        "export it with --to safetensors, torchscript or onnx")
    side, norm = pv.resolve_inputs(source.run, NEEDS[to], res=res, norm_data=norm_data, mean=mean, std=std,
                                   bands=bb.in_chans)
    pv.check_bands(bb, norm)
    if to == "onnx":
        check_input(input_dtype, norm)
    record = pv.record(source, norm, side, results)
    suffixes = {"onnx": (".onnx",), "safetensors": (".safetensors",)}.get(to, (".pt", ".pth"))
    out = pv.check_out(Path(out) if out else default_out(source, to, input_dtype), suffixes, force,
                       protect=Path(bb.source))
    record.update(format=to, file=out.name, input=_input(to, input_dtype, norm, bb))
    if to == "timm":
        record["timm_pretrained_cfg"] = timm_cfg(record)
    known = f"normalisation from {norm.origin}" if norm else "normalisation not recorded (not used by this format)"
    data = f"{norm.many()}, " if norm and norm.raster else f"{bb.in_chans} bands, " if bb.in_chans != 3 else ""
    pv.say("export", f"{bb.arch} from {bb.source} -> {to}, {data}res {side or 'not recorded'}, {known}")
    if bb.missing:
        pv.say("export", f"warning: {len(bb.missing)} tensors are at random init (--allow-missing), listed in the "
                         "record under missing_tensors")
    with pv.atomic_outputs(out) as (tmp, tmp_record):
        WRITERS[to](bb.module, tmp, record, input_dtype)
        pv.write_record(tmp_record, record)
    return record | {"path": str(out), "record_path": str(pv.sidecar(out))}


def check_input(input_dtype: str, norm: pv.Norm) -> None:
    """--input is float or the data's own stored dtype; anything else is refused, saying which to use."""
    if input_dtype == "uint16" and norm.dtype == "uint16":
        try:
            import onnx  # noqa: F401  (_as_uint16)
        except ImportError:
            raise UserError("--input uint16 needs the onnx package: pip install onnx (or use --input float)") from None
    if input_dtype in ("float", norm.dtype):
        return
    stored = f"--input {norm.dtype} (the values as stored) or " if norm.dtype in INPUTS else ""
    raise UserError(f"--input {input_dtype}: the backbone's data is {norm.many()}; use {stored}--input float "
                    f"(float32, {_float_values(norm)})")


def _float_values(norm: pv.Norm) -> str:
    return f"the stored {norm.dtype} values as they are" if norm.raster else "0..1"


def _input(to: str, input_dtype: str, norm: pv.Norm | None, bb) -> dict:
    """The input contract of the written file: tensor name, shape, dtype, values, and the output."""
    shape = ["N", bb.in_chans, "H", "W"]
    output = {"name": "features", "shape": ["N", bb.num_features], "values": "globally pooled features"}
    names = norm.band_names if norm else None
    if to in STATE_DICTS:
        return {"name": None, "shape": shape, "dtype": "float32", "band_names": names,
                "normalisation": "not folded in", "output": output,
                "values": "images preprocessed as 'preprocess' says, normalised as 'normalisation' says"}
    if to == "torchscript":
        dtypes = [norm.dtype, "float32"] if norm.dtype != "float32" else ["float32"]
        values = (f"{norm.dtype} as stored, or float32 {_float_values(norm)}" if norm.dtype != "float32" else
                  _float_values(norm))
    else:
        dtypes = ["float32" if input_dtype == "float" else input_dtype]
        values = _float_values(norm) if input_dtype == "float" else f"{input_dtype} as stored"
    return {"name": "images", "shape": shape, "dtype": dtypes, "band_names": names, "normalisation": "folded in",
            "values": f"{values} ({norm.many()}), preprocessed as 'preprocess' says; H = W = res as trained, any "
                      "size runs", "output": output}


EPILOG = """loading the output (FILE.json holds res, preprocess, normalisation, bands, dtype and input):
  torchvision  m = torchvision.models.resnet50(); m.fc = torch.nn.Identity()
               (N bands: m.conv1 = torch.nn.Conv2d(N, 64, 7, 2, 3, bias=False))
               m.load_state_dict(torch.load(FILE, weights_only=True), strict=True)
  timm         timm.create_model("resnet50", pretrained=True, num_classes=0, in_chans=record["bands"],
                   pretrained_cfg_overlay=dict(file=FILE, **record["timm_pretrained_cfg"]))
  safetensors  m.load_state_dict(safetensors.torch.load_file(FILE), strict=True)   (torchvision's m)
  torchscript  torch.jit.load(FILE)(images)   N x C x H x W: 8-bit data uint8 0..255 or float 0..1;
               rasters their stored dtype or float32, the values as stored
  onnx         onnxruntime.InferenceSession(FILE).run(["features"], {"images": images})   (dtype: --input)
images are resized and center-cropped as 'preprocess' says; torchscript and onnx fold the
normalisation in (per band, in the data's units: 0..255 for 8-bit images, stored values for rasters)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    a = parser.add_argument
    a("source", metavar="RUN_OR_BACKBONE", help="a run folder (runs/<name>, its backbone.pt) or a checkpoint file "
      "(torch .pt/.pth/.tar or .safetensors)")
    a("--to", required=True, choices=tuple(WRITERS), help="output format")
    a("--out", default=None, metavar="FILE", help="output file (default: beside the backbone, "
      "backbone.<format>.pth|.safetensors|.pt|.onnx); its record goes to FILE with .json")
    a("--input", default="float", choices=INPUTS, dest="input_dtype",
      help="onnx: dtype of the input images: float (float32: 0..1 for 8-bit image data, the stored values for "
      "rasters; the default) or the data's own dtype, the values as stored (uint8 for 8-bit images, uint16 or "
      "int16 for rasters stored so)")
    a("--res", type=int, default=None, help="input side (default: the run's data.res; a bare checkpoint needs it "
      "for --to timm)")
    a("--norm-data", default=None, metavar="DIR", help="a `fasthpt prep` folder whose mean/std to use "
      "(default: the run's training data)")
    a("--mean", default=None, metavar="R,G,B", help="8-bit RGB data: normalisation mean in 0..255 units (with "
      "--std); rasters: --norm-data")
    a("--std", default=None, metavar="R,G,B", help="8-bit RGB data: normalisation std in 0..255 units (with --mean)")
    a("--arch", default=None, help=f"expected architecture ({', '.join(ARCH_NAMES)}): checked")
    a("--results", action="append", default=[], metavar="FILE",
      help="`fasthpt eval --json` file whose results for this backbone go into the record (repeatable)")
    a("--force", action="store_true", help="replace FILE and its record when they exist")
    a("--allow-missing", action="store_true", help="export a checkpoint that lacks some backbone tensors (they stay "
      "at random init and are listed in the record); refused otherwise")
    a("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs full unpickling "
      "(runs code from the file: only for files you trust; never needed for .safetensors)")


def run(args: argparse.Namespace) -> int:
    result = export(args.source, args.to, args.out, arch=args.arch, res=args.res, norm_data=args.norm_data,
                    mean=args.mean, std=args.std, input_dtype=args.input_dtype, results=args.results,
                    force=args.force, trust=args.trust_checkpoint, allow_missing=args.allow_missing)
    size = Path(result["path"]).stat().st_size / 2**20
    print(f"{args.to}: wrote {result['path']} ({size:.1f} MiB) and {result['record_path']}")
    return 0
