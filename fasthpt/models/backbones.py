"""ResNet backbones in torchvision's layout, and loading a base checkpoint into them.

Every backbone has torchvision's module names (conv1, bn1, layer1..layer4, fc = Identity), returns
N x D globally pooled features and exposes D as ``model.num_features``; ``backbone.pt`` files are
plain torchvision-format state_dicts without ``fc``, so any torchvision ResNet can read them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet as tv

from fasthpt.errors import UserError
from fasthpt.fileio import atomic_torch_save

log = logging.getLogger(__name__)


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


def build_backbone(arch: str) -> nn.Module:
    """A randomly initialised backbone: images N x 3 x H x W -> features N x model.num_features."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[arch]()


@dataclass
class LoadReport:
    source: str  # what was asked for (path or torchvision:NAME or none)
    format: str  # random | torchvision | moco | composer | fasthpt/timm state_dict ...
    arch: str
    loaded: int = 0  # tensors copied
    missing: list[str] = field(default_factory=list)  # backbone keys left at random init
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys not used
    dropped: list[str] = field(default_factory=list)  # classifier / projection head keys (by design)

    def summary(self) -> str:
        return (
            f"base {self.source} ({self.format}, {self.arch}): {self.loaded} tensors loaded, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.dropped)} head keys dropped"
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


def load_backbone(spec: str, arch: str | None = None, *, trust: bool = False,
                  arch_key: str = "model.arch") -> tuple[nn.Module, LoadReport]:
    """Build a backbone and load base weights from ``spec``.

    spec: ``none`` / ``random`` (random init of ``arch``), ``torchvision:NAME`` (from the local
    torch hub cache only), a run folder (its backbone.pt), or a file (torch or safetensors): a
    torchvision / timm / fasthpt ``backbone.pt`` state_dict,
    the official MoCo release (``state_dict`` with ``module.encoder_q.`` keys; its MLP ``fc`` is
    dropped) or a Composer checkpoint of a fasthpt run (its query backbone). The architecture is
    inferred from key names and shapes; if ``arch`` is given and differs, that is a UserError
    whose hint names ``arch_key``, the user's knob (``model.arch`` in a config, ``--arch`` on a
    command line). Files are read without running code they pickle unless ``trust``; a base
    holding NaN / inf is refused.
    """
    from fasthpt.models import checkpoint_formats as fmt

    if spec in ("none", "random", ""):
        if arch is None:
            raise UserError(f"base 'none' needs an architecture ({arch_key})")
        model = build_backbone(arch)
        return model, LoadReport(source=spec or "none", format="random", arch=arch, missing=[])
    if Path(spec).is_dir():
        from fasthpt.run_folder import run_backbone

        spec = str(run_backbone(Path(spec)))
    state, kind = fmt.read_state(spec, trust)
    state, dropped = fmt.to_backbone_keys(state, spec)
    fmt.check_finite(state, spec)
    found = fmt.infer_arch(state, {name: _reference_shapes(name) for name in ARCHS})
    if arch is not None and found is not None and found != arch:
        fix = f"{arch_key} {found}" if arch_key.startswith("--") else f"{arch_key}={found}"
        raise UserError(f"base {spec} holds a {found} but {arch_key} is {arch}; set {fix} or pick another base")
    chosen = arch or found
    if chosen is None:
        raise UserError(f"base {spec}: not a ResNet this tool knows ({', '.join(ARCHS)}); conv1.weight is "
                        f"{tuple(state['conv1.weight'].shape) if 'conv1.weight' in state else 'absent'}")
    model = build_backbone(chosen)
    report = _copy_weights(model, state, spec, kind, chosen)
    report.dropped = dropped
    log.info(report.summary())
    for name in ("missing", "unexpected"):
        keys = getattr(report, name)
        if keys:
            shown = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
            log.warning("base %s: %d %s keys: %s", spec, len(keys), name, shown)
    return model, report


_SHAPES: dict[str, dict[str, tuple]] = {}


def _reference_shapes(arch: str) -> dict[str, tuple]:
    if arch not in _SHAPES:
        with torch.device("meta"):
            model = build_backbone(arch)
        _SHAPES[arch] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _SHAPES[arch]


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
