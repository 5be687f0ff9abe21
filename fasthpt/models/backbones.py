"""ResNet backbones in torchvision's layout, and loading a base checkpoint into them.

Every backbone has torchvision's module names (conv1, bn1, layer1..layer4, fc = Identity), returns
N x D globally pooled features and exposes D as ``model.num_features``; ``backbone.pt`` files are
plain torchvision-format state_dicts without ``fc``, so any torchvision ResNet can read them.

A backbone takes the data's bands as input channels (``in_chans``; 3 for RGB). A base whose conv1
takes another number of channels (an RGB base for 13-band data) has conv1 adapted by a named
strategy (CONV1_STRATEGIES, recorded in the LoadReport); every other tensor loads exactly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet as tv

from fasthpt.errors import UserError
from fasthpt.fileio import atomic_torch_save

log = logging.getLogger(__name__)
BASE_REPORT = "base.json"  # a run folder's record of its LoadReport (fasthpt.train)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = getattr(tv, name)(weights=None)
        model.num_features = model.fc.in_features
        model.fc = nn.Identity()
        return model

    return build


def _small_resnet(widths: tuple[int, int, int, int]) -> Callable[[], nn.Module]:
    """BasicBlock [1, 1, 1, 1] at the given stage widths, a 3x3 stride-2 stem and no max-pool:
    ResNets for small images on a CPU, with torchvision's module names and forward."""

    def build() -> nn.Module:
        model = tv.ResNet(tv.BasicBlock, [1, 1, 1, 1])
        model.inplanes = widths[0]
        model.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=2, padding=1, bias=False)
        model.bn1 = nn.BatchNorm2d(widths[0])
        model.maxpool = nn.Identity()
        for i, width in enumerate(widths):
            setattr(model, f"layer{i + 1}", model._make_layer(tv.BasicBlock, width, 1, stride=1 if i == 0 else 2))
        for m in model.modules():  # torchvision's init, re-applied to the replaced layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        model.num_features = widths[-1]
        model.fc = nn.Identity()
        return model

    return build


ARCHS: dict[str, Callable[[], nn.Module]] = {
    # 1.2 M parameters; `fasthpt bench train --arch resnet_tiny`: 161-568 samples/s at 56 px on
    # 2-core machines (bench/RESULTS.md)
    "resnet_tiny": _small_resnet((32, 64, 128, 256)),
    # a quarter of resnet_tiny's multiply-adds: the CPU demo's model (configs/demo.yaml)
    "resnet_micro": _small_resnet((16, 32, 64, 128)),
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
}


def build_backbone(arch: str, in_chans: int = 3) -> nn.Module:
    """A randomly initialised backbone: images N x in_chans x H x W -> features N x model.num_features."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise UserError(f"a backbone takes at least 1 input band, got {in_chans!r}")
    model = ARCHS[arch]()
    if in_chans != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    return model


# How conv1 is made from a base whose conv1 takes another number of channels than the data's bands.
# "rgb": the base's R, G, B filters to the bands named red, green and blue (rgb_bands), their mean
# to the other bands; "mean": the mean filter on every band. Both scale by base channels / bands,
# so a uniform input gives the base's response (timm's adapt_input_conv rule for 1 band: the sum).
# "auto": rgb where the band names identify red, green and blue in an RGB base, else mean.
CONV1_STRATEGIES = ("auto", "rgb", "mean")
_COLOURS = {"red": ("red", "r", "b04"), "green": ("green", "g", "b03"), "blue": ("blue", "b", "b02")}


def rgb_bands(band_names) -> tuple[int, int, int] | None:
    """The indices of the red, green and blue bands among ``band_names`` (one band each), else
    None. A band is red when its name is 'red', 'r' or Sentinel-2's 'B04', or has the word 'red' in
    it and not 'edge' (Sentinel-2's red-edge bands); green and blue alike ('B03', 'B02')."""
    if not band_names:
        return None
    found = []
    for colour, names in _COLOURS.items():
        hits = [i for i, name in enumerate(band_names) if _is_colour(str(name), colour, names)]
        if len(hits) != 1:
            return None
        found.append(hits[0])
    return tuple(found) if len(set(found)) == 3 else None


def _is_colour(name: str, colour: str, names: tuple[str, ...]) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return name.strip().lower() in names or (colour in words and "edge" not in words and "rededge" not in words)


def adapt_conv1(weight: torch.Tensor, in_chans: int, strategy: str = "auto", band_names=None):
    """conv1 weights O x Cb x k x k of a base -> O x in_chans x k x k by ``strategy``; returns
    (weights, strategy used, a line that says what was done)."""
    if strategy not in CONV1_STRATEGIES:
        raise UserError(f"hpt.conv1 {strategy!r}; valid: {', '.join(CONV1_STRATEGIES)}")
    base = weight.shape[1]
    rgb = rgb_bands(band_names) if base == 3 and in_chans > 3 else None
    if strategy == "auto":
        strategy = "rgb" if rgb else "mean"
    scale = base / in_chans
    mean = weight.float().mean(1, keepdim=True)
    out = mean.repeat(1, in_chans, 1, 1)
    if strategy == "mean":
        how = f"mean: the mean of the base's {base} input filters on each of the {in_chans} bands, x{base}/{in_chans}"
    else:
        if rgb is None:
            raise UserError(f"hpt.conv1=rgb needs an RGB base and bands named red, green and blue (e.g. B04, B03, "
                            f"B02), got a {base}-channel base and bands {_shown(band_names)}; use hpt.conv1=mean "
                            "or name the bands (fasthpt prep --band-names)")
        for channel, band in enumerate(rgb):
            out[:, band] = weight[:, channel].float()
        named = ", ".join(f"{c}={band_names[b]}" for c, b in zip("RGB", rgb))
        how = f"rgb: the base's R, G, B filters to {named}, their mean to the other {in_chans - 3} bands, x3/{in_chans}"
    return (out * scale).to(weight.dtype), strategy, how


def _shown(names) -> str:
    return "(unnamed)" if not names else ", ".join(map(str, names))


@dataclass
class LoadReport:
    source: str  # what was asked for (path or torchvision:NAME or none)
    format: str  # random | torchvision | moco | composer | fasthpt/timm state_dict ...
    arch: str
    loaded: int = 0  # tensors copied
    missing: list[str] = field(default_factory=list)  # backbone keys left at random init
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys not used
    dropped: list[str] = field(default_factory=list)  # classifier / projection head keys (by design)
    in_chans: int = 3  # input bands of the built backbone
    # How conv1 was made: "as is" (the base's conv1 takes in_chans channels), "random" (no base),
    # or an adapt_conv1 strategy ("rgb", "mean"); conv1_how says it in words.
    conv1: str = "as is"
    conv1_how: str = ""

    def summary(self) -> str:
        stem = f"; conv1 {self.conv1_how}" if self.conv1_how else ""
        return (
            f"base {self.source} ({self.format}, {self.arch}): {self.loaded} tensors loaded, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.dropped)} head keys dropped"
            f"{stem}"
        )


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights and buffers in torchvision's layout, no ``fc``: CPU tensors of their own
    (contiguous, sharing no storage), as torch.save and safetensors both write them."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in _plain_state_dict(model).items()
            if not k.startswith("fc.")}


def save_backbone(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state_dict (torchvision layout, no ``fc``) to ``path`` atomically."""
    return atomic_torch_save(backbone_state(model), path)


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with wrappers that speed-up algorithms insert (Composer's BlurConv2d keeps the
    real conv as ``.conv``) folded back to torchvision's key names."""
    wrapped = [name + "." for name, m in model.named_modules() if type(m).__name__ == "BlurConv2d"]
    out = {}
    for key, value in model.state_dict().items():
        for prefix in wrapped:
            if key.startswith(prefix + "conv."):
                key = prefix + key[len(prefix) + len("conv.") :]
            elif key.startswith(prefix) and key[len(prefix) :].startswith("blur"):
                key = None
                break
        if key is not None:
            out[key] = value
    return out


def load_backbone(spec: str, arch: str | None = None, *, trust: bool = False, arch_key: str = "model.arch",
                  in_chans: int | None = 3, band_names=None, conv1: str = "auto") -> tuple[nn.Module, LoadReport]:
    """Build a backbone and load base weights from ``spec``.

    spec: ``none`` / ``random`` (random init of ``arch``), ``torchvision:NAME`` (from the local
    torch hub cache only), a run folder (its backbone.pt), or a file (torch or safetensors): a
    torchvision / timm / fasthpt ``backbone.pt`` state_dict,
    the official MoCo release (``state_dict`` with ``module.encoder_q.`` keys; its MLP ``fc`` is
    dropped) or a Composer checkpoint of a fasthpt run (its query backbone). The architecture is
    inferred from key names and shapes; if ``arch`` is given and differs, that is a UserError
    whose hint names ``arch_key``, the user's knob (``model.arch`` in a config, ``--arch`` on a
    command line). Files are read without running code they pickle unless ``trust``; a base
    holding NaN / inf is refused. ``in_chans``: the data's bands; a base whose conv1 takes another
    number of channels has it adapted by ``conv1`` (adapt_conv1; ``band_names`` name the data's bands);
    None: the base's own channel count (3 for a random init), loaded as it is.
    """
    from fasthpt.models import checkpoint_formats as fmt

    if spec in ("none", "random", ""):
        if arch is None:
            raise UserError(f"base 'none' needs an architecture ({arch_key})")
        in_chans = 3 if in_chans is None else in_chans
        model = build_backbone(arch, in_chans)
        return model, LoadReport(source=spec or "none", format="random", arch=arch, missing=[], in_chans=in_chans,
                                 conv1="random")
    if Path(spec).is_dir():
        from fasthpt.run_folder import run_backbone

        spec = str(run_backbone(Path(spec)))
    state, kind = fmt.read_state(spec, trust)
    state, dropped = fmt.to_backbone_keys(state, spec)
    fmt.check_finite(state, spec)
    stem = state.get(fmt.STEM)
    base_chans = stem.shape[1] if torch.is_tensor(stem) and stem.ndim == 4 else 3
    in_chans = base_chans if in_chans is None else in_chans
    found = fmt.infer_arch(state, {name: _reference_shapes(name, base_chans) for name in ARCHS})
    if arch is not None and found is not None and found != arch:
        fix = f"{arch_key} {found}" if arch_key.startswith("--") else f"{arch_key}={found}"
        raise UserError(f"base {spec} holds a {found} but {arch_key} is {arch}; set {fix} or pick another base")
    chosen = arch or found
    if chosen is None:
        raise UserError(f"base {spec}: not a ResNet this tool knows ({', '.join(ARCHS)}); conv1.weight is "
                        f"{tuple(state['conv1.weight'].shape) if 'conv1.weight' in state else 'absent'}")
    model = build_backbone(chosen, in_chans)
    used, how = "as is", ""
    if base_chans != in_chans:
        weight, used, how = adapt_conv1(state[fmt.STEM], in_chans, conv1, band_names)
        state = {**state, fmt.STEM: weight}
    report = _copy_weights(model, state, spec, kind, chosen)
    report.dropped, report.in_chans, report.conv1, report.conv1_how = dropped, in_chans, used, how
    log.info(report.summary())
    for name in ("missing", "unexpected"):
        keys = getattr(report, name)
        if keys:
            shown = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
            log.warning("base %s: %d %s keys: %s", spec, len(keys), name, shown)
    return model, report


def missing_summary(missing: list[str], module: nn.Module) -> str:
    """'all of layer4; bn1.weight' for missing tensor names: a top-level part of the network named
    once when all of it is missing, other names listed (the first few)."""
    parts: dict[str, list[str]] = {}
    for key in module.state_dict():
        parts.setdefault(key.split(".")[0], []).append(key)
    whole = [p for p, keys in parts.items() if all(k in missing or k.endswith("num_batches_tracked") for k in keys)]
    rest = [k for k in missing if k.split(".")[0] not in whole]
    shown = [f"all of {p}" for p in whole] + rest[:4] + ([f"{len(rest) - 4} more"] if len(rest) > 4 else [])
    return "; ".join(shown)


def missing_tensors(module: nn.Module, report: LoadReport, spec: str, allow: bool, fix: str) -> list[str]:
    """The backbone tensors ``spec`` did not hold (left at random init); refused in one line naming
    them unless ``allow`` (``fix``: how the user allows it, or what to give instead)."""
    counted = [k for k in module.state_dict() if not k.endswith("num_batches_tracked")]  # a counter, unused in eval
    missing = [k for k in report.missing if k in counted]
    if missing and not allow:
        raise UserError(f"backbone {spec} lacks {len(missing)} of the {len(counted)} tensors of a {report.arch} "
                        f"({missing_summary(missing, module)}): they would stay at random init; {fix}")
    return missing


_SHAPES: dict[str, dict[str, tuple]] = {}


def _reference_shapes(arch: str, in_chans: int = 3) -> dict[str, tuple]:
    """Every tensor's shape in ``arch`` with ``in_chans`` input channels (only conv1 differs)."""
    if arch not in _SHAPES:
        with torch.device("meta"):
            model = build_backbone(arch)
        _SHAPES[arch] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = dict(_SHAPES[arch])
    out, _, *kernel = shapes["conv1.weight"]
    shapes["conv1.weight"] = (out, in_chans, *kernel)
    return shapes


def _copy_weights(model: nn.Module, state: dict, spec: str, kind: str, arch: str) -> LoadReport:
    own = model.state_dict()
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise UserError(f"base {spec} does not fit {arch}: {k} is {tuple(state[k].shape)}, "
                        f"expected {tuple(own[k].shape)}")
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    loaded = sum(1 for k in own if k in state)
    if loaded == 0:
        raise UserError(f"base {spec}: no tensor matches a {arch} backbone; is it a ResNet checkpoint?")
    return LoadReport(source=spec, format=kind, arch=arch, loaded=loaded, missing=list(result.missing_keys),
                      unexpected=[k for k in state if k not in own])
