"""`torch` backend: torchvision's MoCo-v2 transforms over the WebDataset shards, DataLoader workers.

The baseline every other backend is compared against, and the fallback that needs neither FFCV nor
DALI. The augmentation is MoCo-v2's torchvision recipe (facebookresearch/moco main_moco.py, aug_plus):
RandomResizedCrop(scale) -> RandomApply(ColorJitter, p) -> RandomGrayscale(p) ->
RandomApply(GaussianBlur, p) -> RandomHorizontalFlip -> ToTensor -> Normalize. Parameters are drawn
with torchvision's own ``get_params`` and applied with ``torchvision.transforms.functional``, which
is what those transforms do internally; splitting draw from apply lets tests fix the parameters and
count the draws. Every sample is augmented under its own seed (seed, epoch, index), so a run repeats
exactly whatever the number of workers.

Shards are read by random access (offsets from the tar headers, see ``common.index_wds``) rather
than streamed, so that an epoch is an exact permutation split across ranks (no shuffle buffer,
no repeated or dropped samples). Workers send uint8 views; normalisation happens on the device.

The labelled loader (linear probe, fine-tuning) is the same code with one view per sample under the
labelled policy (common.labelled_policy: RandomResizedCrop scale (0.08, 1) + flip, as torchvision's
RandomResizedCrop and RandomHorizontalFlip in MoCo's main_lincls), and the label.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fasthpt.data import common, spectral
from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError
from fasthpt.manifest import Manifest
from fasthpt.raster_format import npy_array

BACKEND = "torch"


@dataclass
class ViewParams:
    """Every random draw of one view (torchvision's parameterisation)."""

    crop: tuple[int, int, int, int]  # top, left, height, width in the source image
    jitter: bool
    order: tuple[int, ...]  # ColorJitter's random op order: 0 brightness, 1 contrast, 2 saturation, 3 hue
    factors: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    gray: bool
    blur: bool
    sigma: float
    flip: bool


def _jitter_ranges(policy: AugPolicy):
    def around_one(v):
        return [max(0.0, 1 - v), 1 + v] if v > 0 else None

    hue = [-policy.hue, policy.hue] if policy.hue > 0 else None
    return around_one(policy.brightness), around_one(policy.contrast), around_one(policy.saturation), hue


def draw_params(policy: AugPolicy, width: int, height: int, res: int) -> ViewParams:
    """Draw one view's parameters from torch's global RNG, exactly as the MoCo-v2 transforms do
    (the blur sigma from the policy's range for views of side ``res``)."""
    probe = Image.new("L", (width, height))  # get_params only reads the size
    crop = T.RandomResizedCrop.get_params(probe, list(policy.crop_scale), list(policy.crop_ratio))
    jitter = bool(torch.rand(1).item() < policy.jitter_p)
    order, b, c, s, h = T.ColorJitter.get_params(*_jitter_ranges(policy))
    factors = tuple(1.0 if v is None else float(v) for v in (b, c, s)) + (0.0 if h is None else float(h),)
    gray = bool(torch.rand(1).item() < policy.gray_p)
    blur = bool(torch.rand(1).item() < policy.blur_p)
    sigma = float(torch.empty(1).uniform_(*policy.sigma_range(res)).item())
    flip = bool(torch.rand(1).item() < policy.flip_p)
    return ViewParams(tuple(crop), jitter, tuple(int(i) for i in order), factors, gray, blur, sigma, flip)


# One function per operation with fixed parameters (the references the backend tests compare to).
def op_crop(img: Image.Image, crop: tuple[int, int, int, int], res: int) -> Image.Image:
    return F.resized_crop(img, *crop, [res, res], interpolation=T.InterpolationMode.BILINEAR, antialias=True)


def op_jitter(img: Image.Image, factors, order=(0, 1, 2, 3)) -> Image.Image:
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    neutral = (1.0, 1.0, 1.0, 0.0)
    for i in order:
        if factors[i] != neutral[i]:
            img = adjust[i](img, factors[i])
    return img


def op_gray(img: Image.Image) -> Image.Image:
    return F.rgb_to_grayscale(img, num_output_channels=3)


def moco_kernel(policy: AugPolicy, res: int) -> int:
    """The widest kernel the policy allows at ``res`` (policy.blur_kernel_cap: 23 taps at 224 px),
    wide enough for any sigma in its range: the baseline blurs with torchvision's fixed-size
    GaussianBlur, where MoCo-v2 used PIL's GaussianBlur(radius=sigma)."""
    return policy.blur_kernel_cap(res)


def op_blur(img: Image.Image, sigma: float, kernel: int) -> Image.Image:
    return F.gaussian_blur(img, [kernel, kernel], [sigma, sigma])


def op_flip(img: Image.Image) -> Image.Image:
    return F.hflip(img)


def apply_view(img: Image.Image, p: ViewParams, policy: AugPolicy, res: int) -> torch.Tensor:
    """One augmented view as a uint8 3 x res x res tensor (normalisation happens on the device)."""
    img = op_crop(img, p.crop, res)
    if p.jitter:
        img = op_jitter(img, p.factors, p.order)
    if p.gray:
        img = op_gray(img)
    if p.blur:
        img = op_blur(img, p.sigma, moco_kernel(policy, res))
    if p.flip:
        img = op_flip(img)
    return F.pil_to_tensor(img)


def eval_view(img: Image.Image, res: int) -> torch.Tensor:
    img = F.resize(img, common.eval_resize(res), interpolation=T.InterpolationMode.BILINEAR, antialias=True)
    return F.pil_to_tensor(F.center_crop(img, [res, res]))


class _WdsImages(Dataset):
    """Random access to the images of a split (JPEGs, or .npy rasters: fasthpt.data.spectral);
    items are addressed as (epoch, index).

    ``views`` 0: the eval view and the label; 1: one augmented view and the label (the labelled
    loader); 2: two augmented views (SSL). Each augmented item draws its parameters under its own
    seed (seed, epoch, index). Views are uint8 for JPEG data and float32 in stored units for
    rasters; the loader normalises them on the device."""

    def __init__(self, manifest: Manifest, split: str, res: int, policy: AugPolicy | None, seed: int, debug=False,
                 views: int = 2):
        self.shards, self.samples = common.wds_samples(manifest, split)
        if policy is not None and views == 1:
            common.require_labels(manifest, split, self.samples)
        self.bands = spectral.bands_of(manifest)
        if self.bands is not None and policy is not None:
            policy = spectral.spectral_policy(policy)
        self.res, self.policy, self.seed, self.debug = res, policy, seed, debug
        self.views = views if policy is not None else 0
        self._handles: dict[int, object] = {}

    def __len__(self):
        return len(self.samples)

    def __getstate__(self):  # worker processes open their own handles (spawn cannot pickle files)
        return {**self.__dict__, "_handles": {}}

    def __del__(self):
        for handle in getattr(self, "_handles", {}).values():  # absent if __init__ failed
            handle.close()

    def _image(self, index: int) -> Image.Image | torch.Tensor:
        """A JPEG sample as an RGB PIL image; a raster as a float32 C x H x W tensor (stored units)."""
        sample = self.samples[index]
        handle = self._handles.get(sample.shard)
        if handle is None:  # opened lazily so that each worker process has its own file handles
            handle = self._handles[sample.shard] = open(self.shards[sample.shard], "rb")
        data = common.read_bytes(handle, sample)
        try:
            if self.bands is not None:
                return spectral.to_tensor(npy_array(data))
            return Image.open(io.BytesIO(data)).convert("RGB")
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot decode sample {sample.key} of {self.shards[sample.shard]}: {exc}") from None

    def _views(self, img, params: list[ViewParams]) -> tuple:
        if self.bands is None:
            return tuple(apply_view(img, p, self.policy, self.res) for p in params)
        kernel = moco_kernel(self.policy, self.res)
        return tuple(spectral.view(img, p.crop, p.jitter, p.factors[0], p.factors[1], p.blur, p.sigma, p.flip,
                                   self.res, self.bands, kernel) for p in params)

    def __getitem__(self, item):
        epoch, index = item
        img = self._image(index)
        label = self.samples[index].label
        if self.views == 0:
            if self.bands is not None:
                return spectral.eval_view(img, self.res, common.eval_resize(self.res)), label
            return eval_view(img, self.res), label
        width, height = img.size if self.bands is None else (img.shape[2], img.shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(common.epoch_seed(self.seed, epoch, index))
            params = [draw_params(self.policy, width, height, self.res) for _ in range(self.views)]
        views = self._views(img, params)
        if self.views == 1:
            views += (label,)
        if self.debug:
            return views + ([asdict(p) for p in params], index)
        return views


class _Plan:
    """The DataLoader's batch sampler: batches of (epoch, index), epoch after epoch from ``start``
    (epoch, first batch), without end. One DataLoader iterator therefore runs across epoch
    boundaries: its workers prefetch the next epoch while this one's last batches train, and
    nothing restarts between epochs (Composer's islice never finishes an epoch's iterator)."""

    def __init__(self, indices_for_epoch, batch_size: int, drop_last: bool):
        self.indices_for_epoch, self.batch_size, self.drop_last = indices_for_epoch, batch_size, drop_last
        self.start = (0, 0)
        self.count = len(indices_for_epoch(0))  # samples per epoch on this rank (the same every epoch)

    def __len__(self) -> int:
        return common.num_batches(self.count, self.batch_size, self.drop_last)

    def __iter__(self):
        epoch, first = self.start
        while True:
            order = self.indices_for_epoch(epoch)
            for b in range(first, len(self)):
                yield [(epoch, int(i)) for i in order[b * self.batch_size: (b + 1) * self.batch_size]]
            epoch, first = epoch + 1, 0


def _collate(views: int):
    """Stack the ``views`` augmented views (and the labels of a one-view batch); debug extras: the
    sample indices as a tensor, then per view its draws (common.stack_draws)."""

    def collate(batch):
        out = tuple(torch.stack([item[v] for item in batch]) for v in range(views))
        rest = views
        if views == 1:
            out += (torch.tensor([item[1] for item in batch], dtype=torch.int64),)
            rest = 2
        if len(batch[0]) == rest:
            return out
        draws = tuple(common.stack_draws([item[rest][v] for item in batch]) for v in range(views))
        return out + (torch.tensor([item[rest + 1] for item in batch]), draws)

    return collate


class TorchLoader:
    """Batches of ``dataset`` in ``plan`` order, normalised on ``device``. ``views``: 2 (SSL:
    (view_q, view_k)), 1 (labelled) or 0 (eval): (images, labels). Each pass is one epoch:
    ``set_epoch(e, start_batch)`` chooses the next pass (without it, successive passes are
    successive epochs); the DataLoader iterator is kept from pass to pass while they follow each
    other, and restarted (its workers stay; what they had prefetched is dropped) when not."""

    backend = BACKEND

    def __init__(self, dataset, plan: _Plan, *, workers, device, channels_last, mean, std, views):
        self.plan, self.device, self.channels_last, self.views = plan, device, channels_last, views
        self.num_samples = len(plan) * plan.batch_size if plan.drop_last else plan.count
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(shape)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(shape)
        self.loader = DataLoader(
            dataset, batch_sampler=plan, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None, collate_fn=_collate(self.views) if self.views else None,
            # its own generator: a DataLoader iterator otherwise draws its base seed from the global RNG,
            # so a run resumed from a checkpoint (a new iterator) would drift from the uninterrupted one
            # (every sample is seeded by (seed, epoch, index) anyway, whatever the base seed)
            generator=torch.Generator().manual_seed(0),
        )
        self.epoch, self.start = 0, 0
        self._it = None
        self._next = None  # the (epoch, batch) self._it delivers next

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside the epoch's {len(self)} batches")
        self.epoch, self.start = int(epoch), int(start_batch)

    def __len__(self):
        return len(self.plan)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x.float() - self.mean) / self.std

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        if self._it is None or self._next != (epoch, start):
            self.plan.start = (epoch, start)
            self._it = iter(self.loader)  # persistent workers: reset, in-flight batches dropped
        for b in range(start, len(self)):
            self._next = None  # mid-batch: an error or a break leaves the iterator's position unknown
            batch = next(self._it)
            self._next = (epoch, b + 1) if b + 1 < len(self) else (epoch + 1, 0)
            if self.views == 2:
                out = (self._normalise(batch[0]), self._normalise(batch[1]))
            else:  # eval, labelled: (images, labels)
                out = (self._normalise(batch[0]), batch[1].to(self.device, torch.int64))
            extras = batch[2:]  # debug: (sample indices, draws)
            yield common.DebugBatch.of(out, max(self.views, 1), *extras) if extras else out


def dataset_loader(dataset, indices_for_epoch, *, batch_size, workers, device, drop_last, channels_last, mean, std,
                   what) -> TorchLoader:
    """A TorchLoader over any dataset with a ``views`` attribute whose items are addressed as
    (epoch, index) (this module's, or fasthpt.image_folder's folder of files), normalised with
    ``mean``/``std``; ``indices_for_epoch(epoch)``: the sample indices of an epoch, in order."""
    plan = _Plan(indices_for_epoch, batch_size, drop_last)
    common.check_batch(batch_size, plan.count, drop_last, what)
    return TorchLoader(dataset, plan, workers=workers, device=device, channels_last=channels_last, mean=mean,
                       std=std, views=dataset.views)


def _loader(dataset, indices_for_epoch, *, batch_size, workers, device, drop_last, channels_last, manifest, what):
    return dataset_loader(dataset, indices_for_epoch, batch_size=batch_size, workers=workers, device=device,
                          drop_last=drop_last, channels_last=channels_last, mean=manifest.mean, std=manifest.std,
                          what=what)


def build_ssl_loader(manifest: Manifest, *, split, res, batch_size, policy, workers, device, seed, rank,
                     world_size, drop_last, channels_last, indices=None, debug: bool = False) -> TorchLoader:
    """Two-view MoCo-v2 loader (over the samples ``indices`` of the split when given). ``debug``:
    batches are common.DebugBatch (two views, no labels, the sample indices, each view's draws)."""
    dataset = _WdsImages(manifest, split, res, policy.validate(), seed, debug)
    subset = common.subset_indices(manifest, split, indices)
    return _loader(dataset, lambda epoch: common.labelled_rank_indices(subset, rank, world_size, seed, epoch),
                   batch_size=batch_size, workers=workers, device=device, drop_last=drop_last,
                   channels_last=channels_last, manifest=manifest, what=f"{split} split")


def build_labelled_loader(manifest: Manifest, *, split, res, batch_size, workers, device, seed, rank, world_size,
                          channels_last, indices=None, debug: bool = False) -> TorchLoader:
    """One labelled view per sample (common.labelled_policy), shuffled per epoch, full batches.
    ``debug``: batches are common.DebugBatch (one view, the labels, the sample indices, the draws)."""
    dataset = _WdsImages(manifest, split, res, common.labelled_policy(), seed, debug, views=1)
    subset = common.subset_indices(manifest, split, indices)
    return _loader(dataset, lambda epoch: common.labelled_rank_indices(subset, rank, world_size, seed, epoch),
                   batch_size=batch_size, workers=workers, device=device, drop_last=True,
                   channels_last=channels_last, manifest=manifest, what=f"{split} split")


def build_eval_loader(manifest: Manifest, *, split, res, batch_size, workers, device, rank, world_size,
                      channels_last) -> TorchLoader:
    dataset = _WdsImages(manifest, split, res, None, 0)
    indices = common.eval_rank_indices(len(dataset), rank, world_size)
    return _loader(dataset, lambda epoch: indices, batch_size=batch_size, workers=workers, device=device,
                   drop_last=False, channels_last=channels_last, manifest=manifest, what=f"{split} split")
