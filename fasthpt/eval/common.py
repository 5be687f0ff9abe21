"""Shared set-up for the evaluation protocols (kNN, linear probe, fine-tuning).

Backbone and dataset resolution with fingerprints, the eval and labelled train loaders, the on-disk
feature cache, notices, and the one-JSON-line-per-run result record. Heavy modules (loaders, backbone
loader) are imported lazily so that `fasthpt.eval.knn` stays importable from the training monitor.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fasthpt import feature_cache
from fasthpt.config import ARCH_NAMES
from fasthpt.device import available_device
from fasthpt.errors import UserError
from fasthpt.eval.checks import check_features, check_labels, check_res, check_task, outside_classes
from fasthpt.fileio import append_jsonl, atomic_torch_save, run_metadata
from fasthpt.manifest import MANIFEST, Manifest, load_manifest

# Test transform of the paper (resize 256, center crop 224: Reed et al. 2022, OpenSelfSup's test_pipeline):
# the crop keeps 224/256 = 0.875 of the side.
CENTER_CROP_FRACTION = 224 / 256
IN_MEMORY = "<in-memory module>"
log = logging.getLogger(__name__)


@dataclass
class Backbone:
    """A resolved backbone: the module (images -> N x D), where it came from, and its fingerprint."""

    module: nn.Module
    source: str  # the path or spec given (a run folder's backbone.pt), or IN_MEMORY
    fingerprint: str  # sha256 hex of the checkpoint file, or of the state_dict bytes
    arch: str | None = None
    missing: list[str] = field(default_factory=list)  # tensors left at random init (allow_missing only)
    conv1: tuple[str, str] | None = None  # (strategy, what it did) when conv1 was adapted to the data's bands

    @property
    def in_chans(self) -> int:
        """The input bands its conv1 takes."""
        return int(self.module.conv1.in_channels)

    @property
    def num_features(self) -> int:
        n = getattr(self.module, "num_features", None)
        if n is None:
            raise UserError(f"backbone {self.source} does not declare num_features")
        return int(n)


@dataclass
class Dataset:
    root: Path
    manifest: Manifest
    fingerprint: str  # sha256 of manifest.json: changes whenever `fasthpt prep` rewrites the data


def module_device(backbone: Backbone, device="auto") -> torch.device:
    """Where to run: an in-memory module under "auto" stays where its caller put it (moving it
    would move the caller's model); a loaded checkpoint goes to CUDA when there is one."""
    if (device is None or str(device) == "auto") and backbone.source == IN_MEMORY:
        param = next(backbone.module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    return available_device(device)


def place(backbone: Backbone, device: torch.device) -> nn.Module:
    """The module on ``device``; on CUDA a module this run loaded itself also goes channels_last
    (the layout bf16 convolutions are fastest in on tensor cores). A caller's in-memory module
    keeps its layout: the call must not change the caller's model beyond what it asked for."""
    module = backbone.module.to(device)
    if device.type == "cuda" and backbone.source != IN_MEMORY:
        module = module.to(memory_format=torch.channels_last)
    return module


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the training default there: fasthpt.device), plain fp32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_state_dict(module: nn.Module) -> str:
    """Fingerprint of the weights and buffers (names, shapes, dtypes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resolve_backbone(backbone: str | nn.Module, arch: str | None = None, seed: int = 0,
                     trust: bool = False, allow_missing: bool = False, data: Dataset | None = None) -> Backbone:
    """A path / spec through the project's one backbone loader, or an in-memory module as is: what
    every command (eval, export, embed) takes as a backbone.

    ``random`` / ``none``: random init of ``arch`` under ``seed`` (repeatable, so its features can
    be cached); ``torchvision:NAME``: weights from the local torch hub cache; a run folder: its
    backbone.pt; else a checkpoint file (torch or safetensors), read without running code it
    pickles unless ``trust`` (``--trust-checkpoint``). A checkpoint that leaves backbone tensors at
    random init (a whole stage missing) is refused unless ``allow_missing``; they are then listed.
    ``data``: the dataset it will read: a backbone whose conv1 takes another band count than the
    data's is adapted as pretraining would adapt it (hpt.conv1's default rule), and a note says so;
    without ``data`` it loads as it is.
    """
    if isinstance(backbone, nn.Module):
        return Backbone(backbone, IN_MEMORY, sha256_state_dict(backbone), arch)
    spec = str(backbone)
    from fasthpt.models.backbones import load_backbone, missing_tensors  # lazy: torchvision, checkpoint formats
    from fasthpt.run_folder import run_backbone

    if spec in ("random", "none"):
        if arch is None:
            raise UserError(f"--backbone {spec} needs --arch ({', '.join(ARCH_NAMES)})")
    elif Path(spec).is_dir():
        spec = str(run_backbone(Path(spec)))
    elif not spec.startswith("torchvision:") and not Path(spec).is_file():
        raise UserError(f"backbone checkpoint not found: {spec} (give a run folder, a checkpoint file, "
                        "torchvision:NAME or random)")
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
        torch.manual_seed(seed)
        bands = ({"in_chans": None} if data is None else
                 {"in_chans": data.manifest.bands, "band_names": data.manifest.band_names})
        module, report = load_backbone(spec, arch=arch, trust=trust, arch_key="--arch", **bands)
    adapted = getattr(report, "conv1_how", "") and report.conv1 not in ("as is", "random")
    if adapted:
        print(f"note: backbone {spec}: conv1 {report.conv1_how} (the data has {report.in_chans} bands)",
              file=sys.stderr)
    missing = missing_tensors(module, report, spec, allow_missing, "give a complete checkpoint")
    is_file = Path(spec).is_file()
    fingerprint = sha256_file(Path(spec)) if is_file else sha256_state_dict(module)
    return Backbone(module, spec, fingerprint, getattr(report, "arch", arch), missing,
                    (report.conv1, report.conv1_how) if adapted else None)


def frozen_setup(backbone, data, *, arch, seed, device, res, batch_size, workers, backend, cache_dir, use_cache,
                 progress, trust=False):
    """What the frozen-feature protocols (kNN, linear) share: the dataset (with its test split), the
    backbone, where to run it, and the keyword arguments of ``cached_features``."""
    check_res(res)
    ds = resolve_protocol_data(data)
    bb = resolve_backbone(backbone, arch, seed, trust, data=ds)
    dev = module_device(bb, device)
    feats = dict(res=res, batch_size=batch_size, workers=workers, device=dev, backend=backend,
                 cache_dir=cache_dir, use_cache=use_cache, progress=progress)
    return ds, bb, dev, feats


def resolve_data(data: str | os.PathLike) -> Dataset:
    manifest = load_manifest(data)  # UserError for a missing folder / manifest
    return Dataset(Path(data), manifest, sha256_file(Path(data) / MANIFEST))


def resolve_protocol_data(data: str | os.PathLike) -> Dataset:
    """The dataset of a protocol run, refused up front (before any backbone is loaded) when it has no
    test split: the protocols select on val and report test. The manifest says why it is missing."""
    ds = resolve_data(data)
    for split in ("train", "val", "test"):
        ds.manifest.count(split)  # UserError naming the split (and, for test, how to get one)
    check_task(ds)
    return ds


def eval_loader(data: Dataset, split: str, res: int, batch_size: int, workers: int, device, backend="auto"):
    """Resize + center-crop loader (no shuffle) over one split, the dataset's mean/std applied."""
    data.manifest.count(split)  # UserError naming the splits when this one is missing
    from fasthpt.data import build_eval_loader

    return build_eval_loader(
        data.root, split=split, backend=backend, res=res, batch_size=batch_size, workers=workers,
        device=device, rank=0, world_size=1,  # the whole split, also when called inside a DDP run
        channels_last=torch.device(device).type == "cuda",
    )


def labelled_batches(data: Dataset, *, res: int, batch_size: int, workers: int, device, backend="auto",
                     seed: int = 0, indices=None):
    """Endless labelled train batches (fasthpt.data.build_labelled_loader: RandomResizedCrop + flip of
    the whole image, the dataset's mean/std applied), reshuffled every epoch."""
    from fasthpt.data import build_labelled_loader

    loader = build_labelled_loader(
        data.root, split="train", backend=backend, res=res, batch_size=batch_size, workers=workers, device=device,
        seed=seed, rank=0, world_size=1, channels_last=torch.device(device).type == "cuda", indices=indices,
    )
    return endless(loader)


def endless(loader):
    """Successive epochs of a per-epoch loader (set_epoch 0, 1, 2, ...)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UserError("the train split yielded no batches")
        epoch += 1


def note(message: str, quiet: bool = False) -> str:
    """One "note: ..." line on stderr (unless quiet); returns the message, for the result's notices."""
    if not quiet:
        print(f"note: {message}", file=sys.stderr, flush=True)
    return message


def forecast(what: str, passes: float, device, notices: list, quiet: bool, runs: int, hint: str,
             fast_passes: float | None = None):
    """The run's fasthpt.forecast.Forecast in image passes on the CPU, said as a notice (printed
    unless quiet, and kept in the result); None on a GPU, for nothing to do, or runs=0 (a later seed
    of a series whose first run forecast them all)."""
    if torch.device(device).type != "cpu" or runs < 1 or passes <= 0:
        return None
    from fasthpt.forecast import Forecast

    return Forecast(what, passes, "image passes", hint, fast_units=fast_passes, runs=runs,
                    say=lambda message: notices.append(note(message, quiet)))


def clamp_batch(batch_size: int, available: int, what: str, notices: list, quiet: bool = False) -> int:
    """``batch_size``, or ``available`` when it is smaller (a notice; not refused)."""
    if 0 < available < batch_size:
        notices.append(note(f"--batch-size {batch_size} is more than the {available} {what}; using {available}",
                            quiet))
        return available
    return batch_size


def default_cache_dir(data: Dataset) -> Path:
    """<data>/.cache/features when the data folder is writable, else ~/.cache/fasthpt/features."""
    local = data.root.joinpath(*feature_cache.FOLDER)
    try:
        local.mkdir(parents=True, exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    return Path.home() / ".cache" / "fasthpt" / "features"


def cached_features(
    backbone: Backbone, data: Dataset, split: str, *, res: int, batch_size: int, workers: int,
    device: torch.device, backend: str = "auto", cache_dir: Path | None = None, use_cache: bool = True,
    progress: bool = True, forecast=None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Frozen features of one split (resize + center crop), cached on disk; an extraction tells
    ``forecast`` (fasthpt.forecast.Forecast, in image passes) of each batch.

    The key holds everything that changes the numbers: backbone fingerprint, dataset fingerprint,
    split, resolution, loader backend and device type (bf16 on CUDA, fp32 on the CPU).
    Returns (features M x D float32, labels M int64, hit: whether they came from the cache).
    """
    from fasthpt.eval.features import extract_features

    path = cache_path(backbone, data, split, res=res, device=device, backend=backend, cache_dir=cache_dir,
                      use_cache=use_cache)
    if path is not None and path.is_file():
        cached = _read_cache(path, data)
        if cached is not None:
            return *cached, True
    loader = eval_loader(data, split, res, batch_size, workers, device, backend)
    module = place(backbone, device)
    with autocast(device):
        feats, labels = extract_features(module, loader, device=device, progress=progress, desc=f"features {split}",
                                         forecast=forecast)
    check_features(feats, backbone.source, split)
    check_labels(labels, data, split)
    if path is not None:
        try:  # the cache only saves time: a full disk or an unwritable default folder must not cost the result
            atomic_torch_save({"features": feats, "labels": labels}, path)
        except OSError as exc:
            log.warning("feature cache not written (%s); the result is unaffected", exc)
    return feats, labels, False


def _read_cache(path: Path, data: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (features, labels), or None for a file that is truncated, foreign or holds what
    extraction would have refused (NaN, labels outside the classes): then it is recomputed."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        feats, labels = blob["features"], blob["labels"]
        if (feats.ndim == 2 and labels.ndim == 1 and len(feats) == len(labels) and bool(torch.isfinite(feats).all())
                and not outside_classes(labels, data.manifest.num_classes).any()):
            return feats, labels
    except Exception:  # noqa: BLE001 - any unreadable cache file is recomputed and overwritten
        pass
    return None


def cache_path(backbone: Backbone, data: Dataset, split: str, *, res: int, device: torch.device, backend: str = "auto",
               cache_dir: Path | None = None, use_cache: bool = True, **_) -> Path | None:
    """Where ``cached_features`` keeps one split's features (None without a cache)."""
    if not use_cache:
        return None
    key = feature_cache.file_name(backbone.fingerprint, data.fingerprint, split, res, backend, device.type)
    return (Path(cache_dir) if cache_dir else default_cache_dir(data)) / key


def is_cached(backbone: Backbone, data: Dataset, split: str, feats: dict) -> bool:
    """Whether ``cached_features(backbone, data, split, **feats)`` would read its features from disk."""
    path = cache_path(backbone, data, split, **feats)
    return path is not None and path.is_file()


def check_outputs(json_path=None, cache_dir=None, use_cache: bool = True) -> None:
    """Refuse, before any work, the outputs that could otherwise only fail once a result exists:
    a ``--json`` that is a folder or cannot be created or appended to, an unwritable ``--cache-dir``."""
    if json_path:
        check_writable(Path(json_path), "--json", folder=False)
    if cache_dir and use_cache:
        check_writable(Path(cache_dir), "--cache-dir", folder=True)


def check_writable(path: Path, flag: str, folder: bool) -> None:
    """``path`` (a file, or a folder when ``folder``) exists with the right kind and is writable, or
    its nearest existing ancestor is a folder in which it can be created (nothing is created here)."""
    want, other = ("folder", "file") if folder else ("file", "folder")
    if path.exists():
        if path.is_dir() != folder:
            raise UserError(f"{flag} {path} is a {other}; give a {want}")
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            raise UserError(f"{flag} {path} is not writable")
        return
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be created: {parent} is not a writable folder")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return float("nan")
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


def step_lr(base_lr: float, it: int, iters: int, gamma: float) -> float:
    """Step decay by ``gamma`` at 1/3 and 2/3 of the iterations (the authors' linear-eval configs:
    OpenSelfSup lr_config)."""
    drops = sum(it >= m for m in (iters // 3, 2 * iters // 3) if m > 0)
    return base_lr * gamma**drops


def make_result(protocol: str, mode: str, backbone: Backbone, data: Dataset, options: dict, settings: dict,
                **fields) -> dict:
    """One result record; ``settings``: eval.paper.settings_fields (protocol version, settings vs the
    paper); it ends with fasthpt.fileio.run_metadata (commit, host, time, versions)."""
    return {
        "protocol": protocol,
        "mode": mode,
        **settings,
        "backbone": backbone.source,
        "backbone_fingerprint": backbone.fingerprint,
        "arch": backbone.arch,
        "dataset": str(data.root),
        "dataset_name": data.manifest.name,
        "dataset_fingerprint": data.fingerprint,
        "num_classes": data.manifest.num_classes,
        "options": options,
        **fields,
        **run_metadata(),
    }


def summary(result: dict) -> str:
    """``MODE: top1=T (test; selected on val V at iteration I) ...``: the reported number first."""
    where = f" at iteration {result['best_iter']}" if result.get("best_iter") is not None else ""
    if result.get("k") is not None:
        where = f" with k={result['k']} t={result['t']}"
    return (
        f"{result['mode']}: top1={result['top1']:.4f} (test; selected on val {result['val_top1']:.4f}{where}) "
        f"seed={result['options'].get('seed')} backbone={result['backbone']} data={result['dataset']} "
        f"({result['wall_clock_s']:.1f} s, {result['samples_per_s']:.0f} samples/s, {result['device']})"
    )


def finish(result: dict, json_path=None, quiet: bool = False) -> dict:
    if not quiet:
        print(summary(result), flush=True)
    if json_path:
        append_jsonl(json_path, result)
    return result
