"""A one-view, labelled, shuffled train loader over the WebDataset shards (torchvision transforms).

The linear probe's train augmentation as in MoCo's main_lincls / OpenSelfSup's linear configs:
RandomResizedCrop(res) with torchvision's default scale (0.08, 1) and ratio (3/4, 4/3) on the whole
decoded image, RandomHorizontalFlip, normalisation with the dataset's mean/std. The shared loader
interface (fasthpt.data) offers two-view SSL loaders and unshuffled eval loaders only; this is the
labelled one-view loader the probe needs. Samples are read by random access through the shard
index (fasthpt.data.common.index_wds), so each epoch is an exact permutation.
"""

from __future__ import annotations

import io
from typing import Iterator

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from fasthpt.errors import UserError
from fasthpt.eval.augment import LINEAR_RATIO, LINEAR_SCALE


class LabelledShards(Dataset):
    """(uint8 3 x res x res RandomResizedCrop + flip view, label) for each sample of one split."""

    def __init__(self, manifest, split: str, res: int):
        from fasthpt.data.common import index_wds

        self.shards = [str(p) for p in manifest.wds_shards(split)]
        self.samples = index_wds(manifest.wds_shards(split))
        bad = sum(s.label < 0 for s in self.samples)
        if bad:
            raise UserError(f"{manifest.root}: {bad} {split} samples have no label (.cls); re-run `fasthpt prep`")
        self.res = res
        self.crop = T.RandomResizedCrop(res, scale=LINEAR_SCALE, ratio=LINEAR_RATIO, antialias=True)
        self._handles: dict[int, object] = {}  # opened lazily, per worker process

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        handle = self._handles.get(sample.shard)
        if handle is None:
            handle = self._handles[sample.shard] = open(self.shards[sample.shard], "rb")
        handle.seek(sample.offset)
        img = Image.open(io.BytesIO(handle.read(sample.size))).convert("RGB")
        img = self.crop(img)
        if torch.rand(1).item() < 0.5:
            img = TF.hflip(img)
        return TF.pil_to_tensor(img), sample.label

    def __getstate__(self):  # file handles do not cross into worker processes
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def labelled_train_batches(
    manifest, res: int, batch_size: int, workers: int, device, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches (normalised float N x 3 x res x res on ``device``, labels int64)."""
    dataset = LabelledShards(manifest, "train", res)
    if len(dataset) < batch_size:
        raise UserError(f"train split has {len(dataset)} images, fewer than --batch-size {batch_size}")
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, pin_memory=torch.device(device).type == "cuda")
    # manifest mean/std are in 0..255 pixel units (fasthpt/data/manifest.py).
    mean = torch.tensor(manifest.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(manifest.std, device=device).view(1, 3, 1, 1)
    while True:
        for images, labels in loader:
            images = images.to(device, non_blocking=True).float()
            yield (images - mean) / std, labels.long()
