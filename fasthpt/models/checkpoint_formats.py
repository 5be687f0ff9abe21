"""Reading base checkpoints of the formats HPT starts from, down to a torchvision-keyed state_dict.

Formats: torchvision / timm ResNet state_dicts (same key names), fasthpt ``backbone.pt``, the
official MoCo release (``{"state_dict": {"module.encoder_q.conv1.weight": ...}}``, MLP head in
``fc.0`` / ``fc.2``), a Composer checkpoint of a fasthpt run (``{"state": {"model": {...
"moco.encoder_q.backbone.conv1.weight" ...}}}``) and ``torchvision:NAME`` from the local hub cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fasthpt.errors import UserError

STEM = "conv1.weight"


def read_state(spec: str) -> tuple[dict, str]:
    """(raw state_dict, format name) for a path or ``torchvision:NAME``."""
    if spec.startswith("torchvision:"):
        return _torchvision_cache(spec.split(":", 1)[1]), "torchvision"
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"base checkpoint not found: {path} (give a file, torchvision:NAME or none)")
    obj = _torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state"), dict) and "model" in obj["state"]:
        return obj["state"]["model"], "composer"
    for key in ("state_dict", "model", "module"):  # MoCo release / common training-script wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key], "moco" if key == "state_dict" else f"checkpoint[{key}]"
    if isinstance(obj, dict) and any(torch.is_tensor(v) for v in obj.values()):
        return obj, "state_dict"
    raise UserError(f"{path}: not a state_dict or a known checkpoint layout")


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - Composer checkpoints pickle more than tensors; retry below
        pass
    try:
        # The user named this file as their own base checkpoint: full unpickling, as torch < 2.6 did.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a checkpoint"
        raise UserError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def _torchvision_cache(name: str) -> dict:
    """torchvision weights for ``name`` from the local hub cache; never downloads."""
    from torchvision.models import get_model_weights

    try:
        weights = list(get_model_weights(name))
    except (ValueError, KeyError):
        raise UserError(f"torchvision:{name}: no such torchvision model") from None
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for w in weights:
        path = cache / Path(w.url).name
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    wanted = weights[0]
    raise UserError(
        f"torchvision:{name} is not in the local cache {cache} and this tool does not download; fetch "
        f"{wanted.url} into that folder, or pass the file itself as hpt.base=/path/to/{Path(wanted.url).name}"
    )


def to_backbone_keys(state: dict, spec: str) -> tuple[dict, list[str]]:
    """Strip the prefix in front of the query backbone (``module.encoder_q.``, ``moco.encoder_q.
    backbone.``, ...) and drop the classifier / projection ``fc``; returns (state, dropped keys)."""
    prefix = _backbone_prefix(state, spec)
    out, dropped = {}, []
    for key, value in state.items():
        if not key.startswith(prefix) or not torch.is_tensor(value):
            continue
        key = key[len(prefix) :]
        if key.startswith("fc."):
            dropped.append(key)
        else:
            out[key] = value
    return out, dropped


def _backbone_prefix(state: dict, spec: str) -> str:
    """The prefix P with P+'conv1.weight', P+'bn1.weight' and P+'layer1.0...' present; the query
    encoder is preferred over a key / momentum encoder."""
    candidates = []
    for key in state:
        if key.endswith(STEM):
            p = key[: -len(STEM)]
            if p + "bn1.weight" in state and any(k.startswith(p + "layer1.") for k in state):
                candidates.append(p)
    if not candidates:
        raise UserError(f"base {spec}: no ResNet backbone found (no conv1 / bn1 / layer1 keys)")
    candidates.sort(key=lambda p: ("encoder_k" in p or "momentum" in p or "teacher" in p, len(p)))
    return candidates[0]


def infer_arch(state: dict, references: dict[str, dict[str, tuple]]) -> str | None:
    """The architecture whose every tensor (num_batches_tracked aside: old checkpoints lack it) is
    present in ``state`` with the same shape, and which uses most of ``state``; None if none fits."""
    for arch, shapes in references.items():
        needed = {k: s for k, s in shapes.items() if not k.endswith("num_batches_tracked")}
        if all(k in state and tuple(state[k].shape) == s for k, s in needed.items()):
            extra = [k for k in state if k not in shapes]
            if len(extra) <= len(state) // 10:
                return arch
    return None
