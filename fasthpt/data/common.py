"""Helpers every loader backend shares: process placement, rank sharding, epoch sizes, WDS indexing.

Sharding rules (one place, so every backend agrees on epoch length):
- SSL: each epoch is a permutation of the split drawn from ``seed + epoch``; every rank takes
  ``count // world_size`` samples of it (strided), so ranks are disjoint, hold the same number of
  samples, and together cover the split except ``count % world_size`` (< world_size) samples, which
  change from epoch to epoch. With ``drop_last`` the partial last batch is dropped too.
- Eval: no shuffle, no drop: rank r takes samples r, r + W, r + 2W, ... (every sample once overall).
- Labelled (one view + label, for the linear probe and fine-tuning): the SSL rule, over the split
  or over a subset of its sample indices (the K labelled images of fine-tuning).

Splits: a split name may join several of the manifest's splits with "+" ("train+val": the authors
pretrained on train and val together); its samples are the parts' samples, in part order.
"""

from __future__ import annotations

import logging
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError

log = logging.getLogger("fasthpt.data")

# The labelled train view: torchvision's RandomResizedCrop defaults, scale (0.08, 1) and ratio
# (3/4, 4/3), on the whole decoded image, then a horizontal flip (MoCo's main_lincls; the
# train_pipeline of the authors' linear-eval and finetune configs). No colour, gray or blur.
LABELLED_SCALE = (0.08, 1.0)
LABELLED_RATIO = (3 / 4, 4 / 3)
SPLIT_JOIN = "+"


def labelled_policy() -> AugPolicy:
    """The labelled view as an augmentation policy: every backend's SSL view code, crop and flip only."""
    return AugPolicy(crop_scale=list(LABELLED_SCALE), crop_ratio=list(LABELLED_RATIO), jitter_p=0.0, gray_p=0.0,
                     blur_p=0.0, flip_p=0.5).validate()


def split_parts(split: str) -> list[str]:
    """"train+val" -> ["train", "val"]; a plain split name -> [name]."""
    parts = split.split(SPLIT_JOIN)
    if not all(parts) or len(set(parts)) != len(parts):
        raise UserError(f"bad split {split!r}: split names joined by '+', each once (e.g. train+val)")
    return parts


def split_count(manifest, split: str) -> int:
    """Samples of ``split`` (summed over its parts); UserError naming the splits when one is missing."""
    return sum(manifest.count(part) for part in split_parts(split))


def split_wds_shards(manifest, split: str) -> list[Path]:
    """The shards of ``split``, in part order (samples are numbered in this order)."""
    return [shard for part in split_parts(split) for shard in manifest.wds_shards(part)]


def image_member(manifest) -> str:
    """The WebDataset member that holds a sample's image: "jpg", or "npy" for rasters."""
    return "npy" if manifest.is_raster else "jpg"


def wds_samples(manifest, split: str) -> tuple[list[Path], list]:
    """``split``'s shards and samples (tar headers read, no image), checked against the manifest's count."""
    shards = split_wds_shards(manifest, split)
    samples = index_wds(shards, image_member(manifest))
    expected = split_count(manifest, split)
    if len(samples) != expected:  # every epoch length is computed from the manifest's count
        raise UserError(f"{manifest.root}: manifest says {expected} {split} samples, the WebDataset shards "
                        f"hold {len(samples)}; re-run `fasthpt prep`")
    return shards, samples


def wds_labels(manifest, split: str) -> torch.Tensor:
    """Labels of ``split``'s samples in sample-index order, from the shards' .cls members (no image is read)."""
    samples = require_labels(manifest, split, index_wds(split_wds_shards(manifest, split), image_member(manifest)))
    return torch.tensor([s.label for s in samples], dtype=torch.int64)


def require_labels(manifest, split: str, samples: list) -> list:
    """``samples`` (WdsSample), refused when one has no label: a labelled loader needs every label."""
    if any(s.label < 0 for s in samples):
        raise UserError(f"{manifest.root}: {split} samples without a label (.cls); re-run `fasthpt prep`")
    return samples


def labelled_rank_indices(indices: torch.Tensor, rank: int, world_size: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's sample indices for one labelled epoch: the SSL rule over ``indices``."""
    return indices[ssl_rank_indices(len(indices), rank, world_size, seed, epoch)]


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted sample indices of a seeded, class-stratified ``fraction`` of a split whose labels (in
    sample order) are ``labels``: round(n_c * fraction) of each class c, at least one."""
    picked = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + int(c))
        keep = max(1, round(len(members) * fraction))
        picked.append(members[torch.randperm(len(members), generator=gen)[:keep]])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.int64)


def subset_indices(manifest, split: str, indices) -> torch.Tensor:
    """``indices`` (sample indices of ``split``) checked and as int64, or every index when None."""
    count = split_count(manifest, split)
    if indices is None:
        return torch.arange(count)
    indices = torch.as_tensor(indices, dtype=torch.int64).flatten()
    if len(indices) == 0 or len(set(indices.tolist())) != len(indices):
        raise UserError(f"a subset of the {split} split must name each sample once, and at least one")
    if indices.min() < 0 or indices.max() >= count:
        raise UserError(f"subset index out of range: the {split} split has {count} samples")
    return indices

# The paper's test transform: resize the shorter side to 256 then center-crop 224 (the authors'
# OpenSelfSup test_pipeline), scaled to res.
EVAL_RESIZE_RATIO = 256 / 224


def eval_resize(res: int) -> int:
    return int(round(res * EVAL_RESIZE_RATIO))


def resolve_dist(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): explicit values win; else torch.distributed when initialised; else (0, 1)."""
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"bad process placement: rank {rank} of world_size {world_size}")
    return rank, world_size


def ssl_rank_count(count: int, world_size: int) -> int:
    return count // world_size


def num_batches(samples: int, batch_size: int, drop_last: bool) -> int:
    return samples // batch_size if drop_last else math.ceil(samples / batch_size)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, reproducible 63-bit seed per (seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 7919 + rank) % (2**63 - 1)


def ssl_rank_indices(count: int, rank: int, world_size: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's sample indices for one SSL epoch (see the module docstring)."""
    perm = torch.randperm(count, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    per_rank = ssl_rank_count(count, world_size)
    return perm[rank : per_rank * world_size : world_size]


def eval_rank_indices(count: int, rank: int, world_size: int) -> torch.Tensor:
    return torch.arange(rank, count, world_size)


def check_batch(batch_size: int, per_rank: int, drop_last: bool, what: str) -> None:
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    if drop_last and per_rank < batch_size:
        raise UserError(
            f"{what}: {per_rank} samples per rank is fewer than batch_size {batch_size}: "
            f"every batch would be dropped; lower the batch size"
        )


# What one view drew, per sample (DebugBatch.draws): crop (top, left, height, width) in the
# decoded image; jitter, gray, blur, flip (whether each op ran); factors (brightness, contrast,
# saturation, hue) and sigma (drawn even when their op does not run); order (ColorJitter's op
# order, 0 brightness .. 3 hue) where the backend draws one (DALI's fused colour pass has none).
DRAW_DTYPES = {"crop": torch.int64, "jitter": torch.bool, "order": torch.int64, "factors": torch.float64,
               "gray": torch.bool, "blur": torch.bool, "sigma": torch.float64, "flip": torch.bool}


class DebugBatch(NamedTuple):
    """A batch of a loader built with ``debug=True``, the same shape from every backend.

    views: the augmented views (2 for SSL, 1 labelled), as the loader yields them otherwise;
    labels: int64 N, or None where the SSL pipeline does not read labels (ffcv, torch);
    indices: int64 N sample indices in the split, or None where the reader does not give them
        (DALI's SSL reader: see ``keys``);
    draws: per view, name -> per-sample tensor (N, ...) with the names of DRAW_DTYPES;
    keys: DALI's SSL reader: each sample's "shard path:sample key"; else None."""

    views: tuple
    labels: torch.Tensor | None
    indices: torch.Tensor | None
    draws: tuple
    keys: list | None = None

    @classmethod
    def of(cls, out: tuple, views: int, indices, draws, keys=None) -> DebugBatch:
        """From a loader's usual batch ``out``: ``views`` views, then the labels if any."""
        return cls(tuple(out[:views]), out[views] if len(out) > views else None, indices, draws, keys)

    def draws_of(self, i: int) -> tuple[dict, ...]:
        """Per view, sample ``i``'s draws as Python values (tuples for crop, order, factors)."""
        return tuple({k: _python(t[i]) for k, t in d.items()} for d in self.draws)


def _python(t: torch.Tensor):
    return tuple(t.tolist()) if t.dim() else t.item()


def stack_draws(samples: list[dict]) -> dict[str, torch.Tensor]:
    """One view's per-sample draws (dicts keyed as DRAW_DTYPES) as DebugBatch.draws tensors."""
    return {k: torch.tensor([s[k] for s in samples], dtype=dtype) for k, dtype in DRAW_DTYPES.items()
            if k in samples[0]}


@dataclass(frozen=True)
class WdsSample:
    """Where one sample's image (JPEG or .npy raster) lives in a WebDataset shard, and its label
    (-1: no .cls member)."""

    key: str
    shard: int
    offset: int
    size: int
    label: int


def _split_name(name: str) -> tuple[str, str]:
    # WebDataset convention: the key is the path up to the first dot of the basename.
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


_MEMBER_EXTS = {"jpg": ("jpg", "jpeg"), "npy": ("npy",)}


def index_wds(shards: list[Path], member: str = "jpg") -> list[WdsSample]:
    """Scan tar headers (no image is read) and return the samples in shard order; ``member``: the
    image member's kind ("jpg", or "npy" for rasters)."""
    exts = _MEMBER_EXTS[member]
    samples: list[WdsSample] = []
    for shard_id, path in enumerate(shards):
        if not Path(path).is_file():
            raise UserError(f"missing WebDataset shard {path}: re-run `fasthpt prep`")
        jpgs: dict[str, tarfile.TarInfo] = {}
        labels: dict[str, int] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = _split_name(member.name)
                    if ext in exts:
                        jpgs[key] = member
                    elif ext == "cls":
                        labels[key] = int(tar.extractfile(member).read().decode().strip())
        except (tarfile.TarError, ValueError) as exc:
            raise UserError(f"corrupt WebDataset shard {path}: {exc}") from None
        for key, member in jpgs.items():
            samples.append(WdsSample(key, shard_id, member.offset_data, member.size, labels.get(key, -1)))
    return samples


def read_bytes(handle, sample: WdsSample) -> bytes:
    handle.seek(sample.offset)
    return handle.read(sample.size)


def part_seed(seed: int, part: int) -> int:
    """The seed of part ``part`` of a joined split (a loader per part): distinct per part, so that
    sample i of one part is not augmented like sample i of another."""
    return seed if part == 0 else epoch_seed(seed, 0, 1_000_003 * part)


class InterleavedLoader:
    """Several loaders as one: each epoch runs every part's epoch to its end, batches taken from the
    parts in a random order drawn from (seed, epoch), each part's batches in their own order. Has the
    loader interface (len, num_samples, backend, set_epoch)."""

    def __init__(self, parts: list, seed: int):
        self.parts, self.seed, self.epoch, self.start = parts, seed, 0, 0
        self.backend = parts[0].backend

    @property
    def num_samples(self) -> int:
        return sum(p.num_samples for p in self.parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside the epoch's {len(self)} batches")
        self.epoch, self.start = int(epoch), int(start_batch)

    def order(self, epoch: int) -> list[int]:
        """Which part each batch of ``epoch`` comes from."""
        which = torch.repeat_interleave(torch.arange(len(self.parts)), torch.tensor([len(p) for p in self.parts]))
        perm = torch.randperm(len(which), generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))
        return which[perm].tolist()

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0  # successive passes are successive epochs
        order = self.order(epoch)
        for j, part in enumerate(self.parts):  # a resume: each part skips its batches before ``start``
            part.set_epoch(epoch, start_batch=order[:start].count(j))
        its = [iter(p) for p in self.parts]
        try:
            for j in order[start:]:
                yield next(its[j])
            for it in its:  # each part to its end (a part delivering its last batch ends its epoch)
                for _ in it:
                    pass
        finally:
            for it in its:
                it.close()
