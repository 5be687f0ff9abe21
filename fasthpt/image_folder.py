"""Any folder of images or rasters through the eval loaders' transform, without converting it first.

Listing and decoding are `fasthpt prep`'s (dataprep.sources.FolderSource: dataprep.convert for
8-bit images, dataprep.raster_read for TIFF / GeoTIFF, 16-bit PNG and .npy rasters): hidden files
are ignored, class folders give labels, and a file that is not a usable image is skipped with
prep's reason. Unlike prep, files outside class folders are kept, with label -1 (a folder need not
be labelled to be embedded). Images are decoded from the original files, so PNG / TIFF pixels are
used as they are, not after a JPEG round trip.

Every file must be of the kind the backbone's data holds (fasthpt.provenance.Norm: 8-bit images,
or rasters of that band count and stored dtype, as prep would store the file): another kind is
skipped with its reason, never converted. Rasters get the loaders' raster eval view
(fasthpt.data.spectral.eval_view, in the stored units); the loader standardises every band.
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
    """Items ``(epoch, i)`` -> (eval view, label): uint8 3 x res x res for 8-bit image data, float32
    C x res x res in the stored units for rasters (``kind``: dataprep.raster_read.Kind, what the
    backbone's data holds). A file that cannot be decoded, or holds another kind, comes back as
    zeros with label UNUSABLE (see ``reason``)."""

    views = 0  # the eval view and a label per item (fasthpt.data.torch_backend.dataset_loader)

    def __init__(self, source, res: int, kind=None):
        from dataprep.raster_read import EIGHT_BIT

        self.source, self.res, self.kind = source, res, kind or EIGHT_BIT

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        from dataprep.convert import SkipImage
        from fasthpt.data import spectral
        from fasthpt.data.common import eval_resize
        from fasthpt.data.torch_backend import eval_view

        _, index = item
        try:
            decoded, label = self.source.load(index)
            pixels = self._pixels(decoded)
        except SkipImage:
            if self.kind.eight_bit:
                return torch.zeros(3, self.res, self.res, dtype=torch.uint8), UNUSABLE
            return torch.zeros(self.kind.bands, self.res, self.res), UNUSABLE
        if self.kind.eight_bit:
            return eval_view(Image.fromarray(pixels), self.res), label
        return spectral.eval_view(spectral.to_tensor(pixels), self.res, eval_resize(self.res)), label

    def _pixels(self, decoded):
        """The file's H x W x C pixels when it holds ``kind``; SkipImage with the reason otherwise."""
        from dataprep.convert import Decoded, SkipImage
        from dataprep.raster_read import EIGHT_BIT
        from dataprep.rasters import check_finite

        kind = EIGHT_BIT if isinstance(decoded, Decoded) else decoded.header.kind
        if kind != self.kind:
            raise SkipImage(f"{kind.one()}: the backbone reads {self.kind.many()}, as its data holds them")
        return decoded.pixels if kind.eight_bit else check_finite(decoded.pixels, "the network takes")

    def reason(self, index: int) -> str:
        """Why item ``index`` came back UNUSABLE (decoded again: only failures pay for it)."""
        from dataprep.convert import SkipImage

        try:
            self._pixels(self.source.load(index)[0])
        except SkipImage as exc:
            return str(exc)
        return "unreadable while embedding, readable afterwards"


def data_kind(norm):
    """The dataprep.raster_read.Kind of a fasthpt.provenance.Norm (what the backbone's data holds)."""
    from dataprep.raster_read import EIGHT_BIT, Kind

    return Kind(norm.bands, norm.dtype) if norm.raster else EIGHT_BIT


def eval_loader(source, res: int, *, batch_size: int, workers: int, device, norm):
    """The torch backend's eval loader over ``source``: the views of ``norm``'s kind of data, made
    float and standardised per band on ``device`` with ``norm``'s mean/std, as the loaders do."""
    from fasthpt.data.torch_backend import dataset_loader

    dataset = EvalImages(source, res, data_kind(norm))
    order = list(range(len(dataset)))  # every file once, in listing order (the backend's eval order)
    loader = dataset_loader(dataset, lambda epoch: order, batch_size=batch_size, workers=workers, device=device,
                            drop_last=False, channels_last=device.type == "cuda", mean=norm.mean, std=norm.std,
                            what="--images")
    return dataset, loader
