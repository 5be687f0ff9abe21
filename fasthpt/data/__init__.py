"""The loader interface: one call per loader kind, three interchangeable backends.

    build_ssl_loader(data, split="train", backend="auto", res=224, batch_size=256, ...)
        -> iterable of (view_q, view_k): float32 N x 3 x res x res, normalised with the manifest's
           mean/std, on ``device``; two independently augmented views of the same images.
    build_eval_loader(data, split="val", ...)
        -> iterable of (images, labels int64): resize to round(res * 256/224), center-crop res.
    build_labelled_loader(data, split="train", ...)
        -> iterable of (images, labels int64): one RandomResizedCrop(res, scale (0.08, 1)) + flip view
           of the whole decoded image per sample (the linear probe's and fine-tuning's train view),
           shuffled per epoch, full batches only; optionally over a subset of the split's samples.
    split_labels(data, split) -> int64 tensor: the labels of a split in sample-index order (the
        order of the eval loader's batches, and the numbering of ``indices``), read without decoding.

A split is a manifest split or several joined by "+": "train+val" is both splits as one epoch
(SSL and labelled loaders; common.py).

Every loader also has ``len()`` (batches per epoch on this rank), ``.num_samples`` (samples per
epoch on this rank: those of whole batches with drop_last), ``.backend`` and
``.set_epoch(epoch, start_batch=0)``: the next pass is that epoch (a deterministic reshuffle from
seed + epoch) from that batch on (a resume mid-epoch: earlier batches are not loaded). Without
it, successive passes are successive epochs. A pass may stop at its last batch (Composer's islice)
or anywhere: loaders keep their pipeline, workers and buffers across epochs, and the next epoch
starts loading while the current one's last batch trains.
Each backend is a module (``fasthpt.data.<name>_backend``) exposing ``build_ssl_loader``,
``build_eval_loader`` and ``build_labelled_loader`` with the keyword-only signatures used below; it
is imported only when chosen, so ``import fasthpt.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fasthpt.data.policy import AugPolicy
from fasthpt.errors import FFCV_INSTALL, UserError
from fasthpt.manifest import Manifest, load_manifest

__all__ = ["build_ssl_loader", "build_eval_loader", "build_labelled_loader", "split_labels", "available_backends",
           "resolve_backend", "AugPolicy", "BACKENDS", "BACKEND_CHOICES"]

# Fastest first: the order `auto` tries (bench/RESULTS.md: FFCV and DALI far ahead of torchvision).
BACKENDS = ("ffcv", "dali", "torch")
BACKEND_CHOICES = ("auto", *BACKENDS)  # what a config key or a --backend flag accepts
_MODULES = {name: f"fasthpt.data.{name}_backend" for name in BACKENDS}
# What each backend reads from the prepared folder.
_FORMAT = {"ffcv": "ffcv", "dali": "wds", "torch": "wds"}
_INSTALL = {
    "ffcv": FFCV_INSTALL,
    "dali": "pip install nvidia-dali-cuda120==2.4.0",
    "torch": "pip install torch torchvision pillow",
}


def _import_reason(name: str) -> str | None:
    try:
        importlib.import_module(_MODULES[name])
    except ModuleNotFoundError as exc:
        module = _MODULES[name]
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return f"backend {name!r} is not built in this version of fasthpt"
        return f"missing module {exc.name!r}: {_INSTALL[name]}"
    except ImportError as exc:  # a broken native install (missing shared library, ABI mismatch)
        return f"cannot import {name}: {str(exc).splitlines()[0]}; reinstall: {_INSTALL[name]}"
    return None


def available_backends() -> dict[str, str | None]:
    """name -> None if the backend can be used here, else the reason (and what to install)."""
    return {name: _import_reason(name) for name in BACKENDS}


def resolve_backend(name: str, manifest: Manifest | None = None) -> str:
    """A concrete backend name. 'auto': the fastest backend that imports and whose files the
    manifest holds (ffcv, then dali, then torch). A named backend that cannot run -> UserError."""
    if name != "auto":
        if name not in BACKENDS:
            raise UserError(f"unknown loader backend {name!r}; valid: {', '.join(BACKEND_CHOICES)}")
        reason = _import_reason(name)
        if reason:
            raise UserError(f"loader backend {name!r} is unavailable: {reason}")
        return name
    reasons = []
    for candidate in BACKENDS:
        if manifest is not None and _FORMAT[candidate] not in manifest.formats:
            reasons.append(f"{candidate}: no {_FORMAT[candidate]} files")
            continue
        reason = _import_reason(candidate)
        if reason is None:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    raise UserError("no loader backend can run: " + "; ".join(reasons))


def _manifest(data: str | Path | Manifest) -> Manifest:
    return data if isinstance(data, Manifest) else load_manifest(data)


def _policy(policy: AugPolicy | str | None) -> AugPolicy:
    if policy is None:
        return AugPolicy()
    if isinstance(policy, str):
        return AugPolicy.preset(policy)
    return policy.validate()


def _setup(data, backend, device, rank, world_size):
    from fasthpt.data import common  # imports torch: kept out of `import fasthpt.data`
    from fasthpt.device import resolve_device

    manifest = _manifest(data)
    name = resolve_backend(backend, manifest)
    rank, world_size = common.resolve_dist(rank, world_size)
    return manifest, importlib.import_module(_MODULES[name]), resolve_device(device), rank, world_size


def _check_common(res: int, batch_size: int, workers: int) -> None:
    for key, value, low in (("res", res, 1), ("batch_size", batch_size, 1), ("workers", workers, 0)):
        if value < low:
            raise UserError(f"{key} must be >= {low}, got {value}")


def build_ssl_loader(data, *, split="train", backend="auto", res=224, batch_size=256, policy=None, workers=2,
                     device=None, seed=0, rank=None, world_size=None, drop_last=True, channels_last=False,
                     indices=None):
    """Two-view SSL loader over ``data`` (a `fasthpt prep` folder or a Manifest); see the module doc.
    ``indices``: sample indices of ``split`` to draw each epoch from (a subset of the data)."""
    _check_common(res, batch_size, workers)
    manifest, module, device, rank, world_size = _setup(data, backend, device, rank, world_size)
    return module.build_ssl_loader(
        manifest, split=split, res=res, batch_size=batch_size, policy=_policy(policy), workers=workers,
        device=device, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
        channels_last=channels_last, indices=indices,
    )


def build_eval_loader(data, *, split="val", backend="auto", res=224, batch_size=256, workers=2, device=None,
                      rank=None, world_size=None, channels_last=False):
    """Labelled evaluation loader (resize + center crop, no shuffle, every sample once across ranks)."""
    _check_common(res, batch_size, workers)
    manifest, module, device, rank, world_size = _setup(data, backend, device, rank, world_size)
    return module.build_eval_loader(
        manifest, split=split, res=res, batch_size=batch_size, workers=workers, device=device, rank=rank,
        world_size=world_size, channels_last=channels_last,
    )


def build_labelled_loader(data, *, split="train", backend="auto", res=224, batch_size=256, workers=2, device=None,
                          seed=0, rank=None, world_size=None, channels_last=False, indices=None):
    """Labelled one-view train loader (see the module doc). Per epoch, like the SSL loaders: each
    pass is one epoch, ``set_epoch`` reshuffles (from seed + epoch); ``indices``: sample indices of
    ``split`` to draw from (default: all of them)."""
    _check_common(res, batch_size, workers)
    manifest, module, device, rank, world_size = _setup(data, backend, device, rank, world_size)
    return module.build_labelled_loader(
        manifest, split=split, res=res, batch_size=batch_size, workers=workers, device=device, seed=seed,
        rank=rank, world_size=world_size, channels_last=channels_last, indices=indices,
    )


def split_labels(data, split: str = "train"):
    """Labels (int64 tensor) of ``split`` in sample-index order: from the WebDataset shards' .cls
    members, else from the FFCV file's label field; no image is decoded."""
    from fasthpt.data import common

    manifest = _manifest(data)
    if "wds" in manifest.formats:
        return common.wds_labels(manifest, split)
    resolve_backend("ffcv")  # a UserError saying what to install when FFCV cannot be imported
    return importlib.import_module(_MODULES["ffcv"]).ffcv_labels(manifest, split)
