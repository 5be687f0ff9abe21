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

- torchscript / onnx: backbone with the normalisation folded in: input ``images`` N x 3 x H x W
  RGB, already resized and center-cropped (record["preprocess"]; H = W = res is what it was
  trained at, any size runs); output ``features`` N x D, the globally pooled features.
  TorchScript takes uint8 (0..255) or float (0..1) images; an ONNX file takes the dtype chosen
  with ``--input`` (float, the default, or uint8).
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


class Folded(nn.Module):
    """``backbone`` behind the loaders' normalisation: images -> N x D pooled features.

    uint8 images go through exactly the loaders' arithmetic, (x - mean) / std in 0..255 units
    (fasthpt.data.torch_backend.TorchLoader); float images are taken in 0..1 and scaled first."""

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype != torch.uint8:
            x = x * 255.0
        return self.backbone((x - self.mean) / self.std).flatten(1)


def folded(backbone: nn.Module, norm: pv.Norm) -> Folded:
    """A CPU, eval-mode copy (the caller's module is left as it was)."""
    return Folded(copy.deepcopy(backbone).cpu().float(), norm.mean, norm.std).eval()


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


def _onnx(module: nn.Module, path: Path, record: dict, input_dtype: str) -> None:
    res = record["res"] or ONNX_EXAMPLE_SIDE
    example = torch.zeros(1, 3, res, res, dtype=torch.uint8 if input_dtype == "uint8" else torch.float32)
    with torch.no_grad():
        torch.onnx.export(
            folded(module, _norm(record)), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["images"], output_names=["features"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch"}},
        )


def _norm(record: dict) -> pv.Norm:
    n = record["normalisation"]
    return pv.Norm(n["mean"], n["std"], n["from"])


WRITERS = {"torchvision": _weights, "timm": _weights, "safetensors": _safetensors, "torchscript": _torchscript,
           "onnx": _onnx}


def timm_cfg(record: dict) -> dict:
    """timm pretrained_cfg keys for this export (mean/std in 0..1; the eval crop 224/256)."""
    from fasthpt.eval.common import CENTER_CROP_FRACTION

    res, n = record["res"], record["normalisation"]
    return {"mean": tuple(n["mean_0_1"]), "std": tuple(n["std_0_1"]), "input_size": (3, res, res),
            "crop_pct": CENTER_CROP_FRACTION, "interpolation": "bilinear", "num_classes": 0}


def default_out(source: pv.Source, to: str, input_dtype: str) -> Path:
    """Beside the source: runs/x/backbone.pt -> runs/x/backbone.{torchvision,timm}.pth,
    backbone.safetensors, backbone.torchscript.pt, backbone.onnx or backbone.uint8.onnx."""
    spec = Path(source.backbone.source)
    base = spec.with_suffix("") if spec.is_file() else Path(str(spec).replace(":", "-"))
    tag = {"onnx": ".uint8" if input_dtype == "uint8" else "", "safetensors": ""}.get(to, "." + to)
    return base.with_name(f"{base.name}{tag}{SUFFIX[to]}")


def export(spec: str, to: str, out=None, *, arch=None, res=None, norm_data=None, mean=None, std=None,
           input_dtype: str = "float", results=(), force=False, trust=False, allow_missing=False) -> dict:
    """Write ``spec``'s backbone as ``to`` plus its record; returns the record (with ``file``)."""
    if to not in WRITERS:
        raise UserError(f"--to {to}: choose one of {', '.join(WRITERS)}")
    if input_dtype not in ("float", "uint8"):
        raise UserError(f"--input {input_dtype}: choose float or uint8")
    source = pv.resolve_source(spec, arch=arch, trust=trust, allow_missing=allow_missing)
    bb = source.backbone
    if to in ("torchvision", "timm") and bb.arch not in WEIGHT_ARCHS:
        raise UserError(f"{bb.source} is a {bb.arch}, which {to} does not have; "
                        "export it with --to safetensors, torchscript or onnx")
    side, norm = pv.resolve_inputs(source.run, NEEDS[to], res=res, norm_data=norm_data, mean=mean, std=std)
    record = pv.record(source, norm, side, results)
    suffixes = {"onnx": (".onnx",), "safetensors": (".safetensors",)}.get(to, (".pt", ".pth"))
    out = pv.check_out(Path(out) if out else default_out(source, to, input_dtype), suffixes, force,
                       protect=Path(bb.source))
    record.update(format=to, file=out.name, input=_input(to, input_dtype))
    if to == "timm":
        record["timm_pretrained_cfg"] = timm_cfg(record)
    known = f"normalisation from {norm.origin}" if norm else "normalisation not recorded (not used by this format)"
    pv.say("export", f"{bb.arch} from {bb.source} -> {to}, res {side or 'not recorded'}, {known}")
    if bb.missing:
        pv.say("export", f"warning: {len(bb.missing)} tensors are at random init (--allow-missing), listed in the "
                         "record under missing_tensors")
    with pv.atomic_outputs(out) as (tmp, tmp_record):
        WRITERS[to](bb.module, tmp, record, input_dtype)
        pv.write_record(tmp_record, record)
    return record | {"path": str(out), "record_path": str(pv.sidecar(out))}


def _input(to: str, input_dtype: str) -> str:
    if to in ("torchvision", "timm", "safetensors"):
        return "state_dict; preprocess and normalise as 'preprocess' and 'normalisation' say"
    dtypes = "uint8 (0..255) or float32 (0..1)" if to == "torchscript" else \
        {"float": "float32 (0..1)", "uint8": "uint8 (0..255)"}[input_dtype]
    return (f"images: N x 3 x H x W RGB {dtypes}, preprocessed as 'preprocess' says (H = W = res as trained; "
            f"any size runs); normalisation folded in; output features: N x D pooled")


EPILOG = """loading the output (FILE.json holds res, preprocess and normalisation):
  torchvision  m = torchvision.models.resnet50(); m.fc = torch.nn.Identity()
               m.load_state_dict(torch.load(FILE, weights_only=True), strict=True)
  timm         timm.create_model("resnet50", pretrained=True, num_classes=0,
                   pretrained_cfg_overlay=dict(file=FILE, **record["timm_pretrained_cfg"]))
  safetensors  m.load_state_dict(safetensors.torch.load_file(FILE), strict=True)   (torchvision's m)
  torchscript  torch.jit.load(FILE)(images)   uint8 0..255 or float 0..1, N x 3 x H x W RGB
  onnx         onnxruntime.InferenceSession(FILE).run(["features"], {"images": images})
images are resized and center-cropped as 'preprocess' says; the normalisation is folded in."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    a = parser.add_argument
    a("source", metavar="RUN_OR_BACKBONE", help="a run folder (runs/<name>, its backbone.pt) or a checkpoint file "
      "(torch .pt/.pth/.tar or .safetensors)")
    a("--to", required=True, choices=tuple(WRITERS), help="output format")
    a("--out", default=None, metavar="FILE", help="output file (default: beside the backbone, "
      "backbone.<format>.pth|.safetensors|.pt|.onnx); its record goes to FILE with .json")
    a("--input", default="float", choices=("float", "uint8"), dest="input_dtype",
      help="onnx: dtype of the input images (float 0..1 or uint8 0..255; default float)")
    a("--res", type=int, default=None, help="input side (default: the run's data.res; a bare checkpoint needs it "
      "for --to timm)")
    a("--norm-data", default=None, metavar="DIR", help="a `fasthpt prep` folder whose mean/std to use "
      "(default: the run's training data)")
    a("--mean", default=None, metavar="R,G,B", help="normalisation mean in 0..255 units (with --std)")
    a("--std", default=None, metavar="R,G,B", help="normalisation std in 0..255 units (with --mean)")
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
