"""Any folder of images through the eval loaders' transform, without converting it first.

Listing and decoding are `fasthpt prep`'s (dataprep.sources.FolderSource, dataprep.convert):
hidden files are ignored, class folders give labels, and a file that is not a usable image is
skipped with prep's reason. Unlike prep, files outside class folders are kept, with label -1
(a folder need not be labelled to be embedded). Images are decoded from the original files, so
PNG / TIFF pixels are used as they are, not after a JPEG round trip.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from fasthpt.errors import UserError

UNLABELLED = -1
UNUSABLE = -2  # the label an undecodable image is sent back with: the loader passes labels through
_OUTSIDE = "not inside a class folder"  # dataprep.sources.list_tree's reason for such files


def list_images(root: str | Path):
    """A FolderSource over every visible file under ``root``: (path, label) items sorted by path,
    ``classes`` (empty for a folder without class folders) and ``skipped`` (unreadable entries)."""
    from dataprep.sources import FolderSource

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--images {root}: not a folder")
    source = FolderSource(root.name, root)
    outside = [path for path, why in source.skipped if why == _OUTSIDE]
    source.items = sorted(source.items + [(path, UNLABELLED) for path in outside])
    source.skipped = [(path, why) for path, why in source.skipped if why != _OUTSIDE]
    if not source.items:
        raise UserError(f"--images {root}: no files found")
    return source


class EvalImages(Dataset):
    """Items ``(epoch, i)`` -> (uint8 3 x res x res eval view, label); an image that cannot be
    decoded comes back as zeros with label UNUSABLE (see ``reason``)."""

    def __init__(self, source, res: int):
        self.source, self.res = source, res

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        from dataprep.convert import SkipImage
        from fasthpt.data.torch_backend import eval_view

        _, index = item
        try:
            decoded, label = self.source.load(index)
            _eight_bit(decoded)
        except SkipImage:
            return torch.zeros(3, self.res, self.res, dtype=torch.uint8), UNUSABLE
        return eval_view(Image.fromarray(decoded.pixels), self.res), label

    def reason(self, index: int) -> str:
        """Why item ``index`` came back UNUSABLE (decoded again: only failures pay for it)."""
        from dataprep.convert import SkipImage

        try:
            _eight_bit(self.source.load(index)[0])
        except SkipImage as exc:
            return str(exc)
        return "unreadable while embedding, readable afterwards"


def _eight_bit(decoded) -> None:
    """This transform takes 8-bit RGB: a raster (dataprep.raster_read.Raster: 16-bit, float, N
    bands) is a skip with its reason, not a crash in a loader worker."""
    from dataprep.convert import Decoded, SkipImage

    if not isinstance(decoded, Decoded):
        raise SkipImage(f"{decoded.header.kind.one()}: this command reads 8-bit images only")


def eval_loader(source, res: int, *, batch_size: int, workers: int, device, mean, std):
    """The torch backend's eval loader (uint8 views -> float, normalised on ``device``) over ``source``."""
    from fasthpt.data.torch_backend import TorchLoader

    dataset = EvalImages(source, res)
    order = [(0, i) for i in range(len(dataset))]  # the (epoch, index) items the backend's sampler yields
    loader = TorchLoader(dataset, order, batch_size=batch_size, workers=workers, device=device, drop_last=False,
                         channels_last=device.type == "cuda", mean=mean, std=std, ssl=False)
    return dataset, loader
