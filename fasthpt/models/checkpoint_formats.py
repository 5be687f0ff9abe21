"""Reading base checkpoints of the formats HPT starts from, down to a torchvision-keyed state_dict.

Formats: torchvision / timm ResNet state_dicts (same key names), fasthpt ``backbone.pt``, the
official MoCo release (``{"state_dict": {"module.encoder_q.conv1.weight": ...}}``, MLP head in
``fc.0`` / ``fc.2``), a Composer checkpoint of a fasthpt run (``{"state": {"model": {...
"moco.encoder_q.backbone.conv1.weight" ...}}}``), ``.safetensors`` files (timm's and the Hugging
Face hub's format, `fasthpt export --to safetensors`; told by their header, whatever their name)
and ``torchvision:NAME`` from the local hub cache.

Checkpoints come from the internet, and unpickling runs any callable a file names: every torch file
is read with ``weights_only=True`` plus an allow-list of the data-only types Composer stores;
anything else is refused unless the user opts in (``--trust-checkpoint`` /
``hpt.trust_checkpoint=true``). A safetensors file holds tensors and a JSON header only, and is read
as such: no opt-in applies or is needed.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from pathlib import Path

import torch

from fasthpt.errors import UserError

log = logging.getLogger(__name__)
STEM = "conv1.weight"
OPT_IN = "--trust-checkpoint (eval, demo, export, embed) or hpt.trust_checkpoint=true (pretrain)"


def read_state(spec: str, trust: bool = False) -> tuple[dict, str]:
    """(raw state_dict, format name) for a path or ``torchvision:NAME``. Files are unpickled with
    ``weights_only=True`` (tensors and plain containers only); ``trust`` allows full unpickling of
    a file that cannot be read that way, which runs whatever code the file names."""
    if spec.startswith("torchvision:"):
        return _torchvision_cache(spec.split(":", 1)[1], trust)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"base checkpoint not found: {path} (give a file, torchvision:NAME or none)")
    if is_safetensors(path):
        return read_safetensors(path), "safetensors"
    obj = _torch_load(path, trust)
    release = torchvision_release(path.name)
    if release:  # a torchvision release file under its own name: say which weights it holds
        return obj, release
    if isinstance(obj, dict) and isinstance(obj.get("state"), dict) and "model" in obj["state"]:
        return obj["state"]["model"], "composer"
    for key in ("state_dict", "model", "module"):  # MoCo release / common training-script wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key], "moco" if key == "state_dict" else f"checkpoint[{key}]"
    if isinstance(obj, dict) and any(torch.is_tensor(v) for v in obj.values()):
        return obj, "state_dict"
    raise UserError(f"{path}: not a state_dict or a known checkpoint layout")


# A safetensors file: an 8-byte little-endian header length, then that many bytes of JSON (an
# object: "{"), then the tensor data (github.com/huggingface/safetensors, "Format").
_SAFETENSORS_MAX_HEADER = 100 << 20  # the library's own limit on the header


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file (or is named like one)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9:
        size = int.from_bytes(head[:8], "little")
        if head[8:9] == b"{" and 2 <= size <= min(_SAFETENSORS_MAX_HEADER, path.stat().st_size - 8):
            return True
    return path.suffix.lower() == ".safetensors"


def read_safetensors(path: Path) -> dict:
    """Every tensor of a safetensors file, on the CPU (no code runs: the format holds none)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{path}: reading .safetensors needs the safetensors package: pip install safetensors") \
            from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type: a damaged or foreign file
        raise UserError(f"{path}: cannot be read as a safetensors file ({_first_line(exc)})") from None


def _composer_safe_globals() -> list:
    """The data-only types besides tensors that Composer 0.32.1's ``save_checkpoint`` pickles in a
    fasthpt run's checkpoint (listed by ``torch.serialization.get_unsafe_globals_in_checkpoint``):
    numpy's RNG state (a uint32 ndarray: array, dtype and the dtype's class, as torch.load's
    documentation lists for numpy arrays), ``datetime.timedelta`` in the Timestamp and the torch
    version string in the metadata. None of them can run code while being rebuilt."""
    import datetime

    import numpy as np
    from numpy._core.multiarray import _reconstruct
    from torch.torch_version import TorchVersion

    numeric = [type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                           np.uint32, np.uint64, np.float16, np.float32, np.float64)]
    # numpy < 2 wrote the same function under numpy.core (renamed numpy._core in numpy 2.0)
    return [(_reconstruct, "numpy._core.multiarray._reconstruct"), (_reconstruct, "numpy.core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *numeric, datetime.timedelta, TorchVersion]


def _torch_load(path: Path, trust: bool = False):
    """The unpickled file; weights_only, so a file naming any other callable or class is refused
    with one line, unless ``trust`` (the user's explicit opt-in) allows full unpickling."""
    try:
        with torch.serialization.safe_globals(_composer_safe_globals()), warnings.catch_warnings():
            # torch warns about pickle protocols it may not read; a failure is reported below in one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler refused something in it
        why = _refusal(exc)
    except Exception as exc:  # noqa: BLE001 - empty, truncated or not a torch file at all
        raise UserError(f"{path}: cannot be read as a PyTorch checkpoint ({_first_line(exc)})") from None
    if not trust:
        raise UserError(f"{path}: refused: {why}; if you trust where the file came from, pass {OPT_IN}")
    log.warning("%s: %s; unpickling it in full because it is marked trusted: any code it names runs", path, why)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a checkpoint"
        raise UserError(f"{path}: cannot be read as a PyTorch checkpoint ({_first_line(exc)})") from None


def _refusal(exc: Exception) -> str:
    """Why the weights-only unpickler refused: the global it names ('posix.system', a class), else
    torch's own reason (an unsupported pickle opcode: not a torch checkpoint, or an old pickle)."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it pickles {found.group(1)!r}, which could run code when loaded"
    reason = re.search(r"WeightsUnpickler error: (.+)", text)
    return f"it cannot be read as plain tensors ({reason.group(1) if reason else _first_line(exc)})"


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# The paper's supervised base is torchvision's original ImageNet ResNet-50 (HPT's configs name
# imagenet_r50_supervised; released in 2017, before the V2 recipe of 2021): `torchvision:NAME`
# means these weights, another release is asked for by name (torchvision:resnet50:IMAGENET1K_V2).
PAPER_WEIGHTS = "IMAGENET1K_V1"


def torchvision_release(filename: str) -> str | None:
    """'torchvision resnet50 IMAGENET1K_V2 (not the paper's IMAGENET1K_V1)' for a file named as a
    torchvision ResNet release (resnet50-11ad3fa6.pth), else None."""
    from torchvision.models import get_model_weights

    for arch in ("resnet18", "resnet50"):
        for w in get_model_weights(arch):
            if Path(w.url).name == filename:
                note = "" if w.name == PAPER_WEIGHTS else f" (not the paper's {PAPER_WEIGHTS})"
                return f"torchvision {arch} {w.name}{note}"
    return None


def _torchvision_cache(name: str, trust: bool = False) -> tuple[dict, str]:
    """(state_dict, format) of torchvision's ``NAME[:WEIGHTS]`` from the local hub cache (WEIGHTS
    defaults to the paper's IMAGENET1K_V1); never downloads."""
    from torchvision.models import get_model_weights

    arch, _, which = name.partition(":")
    try:
        weights = {w.name: w for w in get_model_weights(arch)}
    except (ValueError, KeyError):
        raise UserError(f"torchvision:{arch}: no such torchvision model") from None
    which = which or PAPER_WEIGHTS
    if which not in weights:
        raise UserError(f"torchvision:{name}: {arch} has no weights {which!r}; valid: {', '.join(weights)}")
    wanted = weights[which]
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(wanted.url).name
    if not path.is_file():
        raise UserError(
            f"torchvision:{name} ({which}) is not in the local cache {path.parent} and this tool does not "
            f"download; fetch {wanted.url} into that folder, or pass the file itself as "
            f"hpt.base=/path/to/{path.name}")
    return _torch_load(path, trust), torchvision_release(path.name)


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


def check_finite(state: dict, spec: str) -> None:
    """Refuse a base whose floating-point tensors hold NaN or inf, or a BatchNorm running variance
    below zero (a mean of squares: no training makes one; normalising by its square root gives NaN
    features, which would then pass for a learning-rate problem or a chance-level result)."""
    floats = {k: v for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}
    bad = {k: n for k, v in floats.items() if (n := int((~torch.isfinite(v)).sum()))}
    if bad:
        raise UserError(f"base {spec}: {sum(bad.values())} NaN/inf values in {len(bad)} tensors (first: "
                        f"{next(iter(bad))}); the checkpoint is damaged, pick another base")
    negative = {k: n for k, v in floats.items() if k.endswith("running_var") and (n := int((v < 0).sum()))}
    if negative:
        raise UserError(f"base {spec}: {sum(negative.values())} negative BatchNorm running variances in "
                        f"{len(negative)} tensors (first: {next(iter(negative))}); a variance cannot be negative: "
                        "the checkpoint is damaged, pick another base")


def infer_arch(state: dict, references: dict[str, dict[str, tuple]]) -> str | None:
    """The architecture whose every tensor (num_batches_tracked aside: old checkpoints lack it) is
    present in ``state`` with the same shape, and which uses most of ``state``; else the one that
    ``state`` fits in part (every tensor they share has its shape, the stem and most of the rest
    present), so that what is missing can be named; None if none fits."""
    partial = []
    for arch, shapes in references.items():
        needed = {k: s for k, s in shapes.items() if not k.endswith("num_batches_tracked")}
        extra = [k for k in state if k not in shapes]
        if len(extra) > len(state) // 10:
            continue
        shared = [k for k in needed if k in state]
        if any(tuple(state[k].shape) != needed[k] for k in shared):
            continue
        if len(shared) == len(needed):
            return arch
        if STEM in state and len(shared) >= len(needed) // 2:
            partial.append((len(shared), arch))
    return max(partial)[1] if partial else None
