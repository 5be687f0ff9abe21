"""Helpers every loader backend shares: process placement, rank sharding, epoch sizes, WDS indexing.

Sharding rules (one place, so every backend agrees on epoch length):
- SSL: each epoch is a permutation of the split drawn from ``seed + epoch``; every rank takes
  ``count // world_size`` samples of it (strided), so ranks are disjoint, hold the same number of
  samples, and together cover the split except ``count % world_size`` (< world_size) samples, which
  change from epoch to epoch. With ``drop_last`` the partial last batch is dropped too.
- Eval: no shuffle, no drop: rank r takes samples r, r + W, r + 2W, ... (every sample once overall).
"""

from __future__ import annotations

import logging
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fasthpt.errors import UserError

log = logging.getLogger("fasthpt.data")

# The paper's test transform: resize the shorter side to 256 then center-crop 224 (HPT.md), scaled to res.
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


def resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


@dataclass(frozen=True)
class WdsSample:
    """Where one sample's JPEG lives in a WebDataset shard, and its label (-1: no .cls member)."""

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


def index_wds(shards: list[Path]) -> list[WdsSample]:
    """Scan tar headers (no JPEG is read) and return the samples in shard order."""
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
                    if ext in ("jpg", "jpeg"):
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
