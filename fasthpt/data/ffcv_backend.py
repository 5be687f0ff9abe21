"""`ffcv` backend: the .beton files through FFCV, two views from ONE decode, compiled augmentations.

SSL pipeline ('image' field): ViewsCropDecoder -> ViewsAugment (ffcv_ops.py) with two views, both
numba-compiled and parallel over the batch with FFCV's own iterator; the label field is not read.
Labelled pipeline (linear probe, fine-tuning): the same with one view, the labelled policy
(common.labelled_policy: crop and flip only) and the label field (IntDecoder). Where the views go:
- CPU device: the augmentation writes normalised float32 straight into FFCV's batch slot, already in
  the final layout (channels_last or NCHW), so the loader yields views of it with no copy. As with
  FFCV's own CPU pipelines, a batch stays valid only until the next one is drawn (FFCV's thread then
  refills its slot; measured): clone it to keep it longer.
- CUDA device: the slot holds uint8 views (4x fewer bytes over PCIe, page-locked by FFCV when CUDA is
  present); they are copied in the background (done before the next draw: ``_DeviceCopies``) and
  normalised on the device.
Eval pipeline: ffcv_ops.CenterCropDecoder (torchvision's Resize(round(res * 256/224)) + CenterCrop(res),
the paper's test transform, antialiased) + IntDecoder; normalised on the device.

Buffers: FFCV 1.0.2 allocates every operation's batch slots afresh at each epoch (and page-locks
them when CUDA is present); here they are allocated once per loader (ffcv_compat.ReusedMemory).
Every use of FFCV's internals (this order, those buffers, the end-of-epoch polling) is in
ffcv_compat.py, checked against the FFCV version it was read from.

Sharding and epoch length follow fasthpt.data.common (one rule for every backend), through a
TraversalOrder of our own (ffcv_compat.adopt): it needs neither torch.distributed nor FFCV's
distributed mode.
A joined split ("train+val") is one .beton per part: one loader per part, their batches interleaved
in a seeded random order (common.InterleavedLoader), so a batch holds samples of one part only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fasthpt.data import ffcv_compat as compat  # first: refuses an FFCV version it was not read from

# isort: split
from ffcv.fields.basics import IntDecoder
from ffcv.pipeline import PipelineSpec

from fasthpt.data import common, draws, spectral
from fasthpt.data import ffcv_kernels as K
from fasthpt.data import ffcv_ops as ops  # imports ffcv and numba: fasthpt.data reports them missing
from fasthpt.data import ffcv_raster_ops as raster_ops
from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError
from fasthpt.manifest import Manifest

BACKEND = "ffcv"
BATCHES_AHEAD = 3  # FFCV's default prefetch depth


def _beton(manifest: Manifest, split: str) -> Path:
    path = manifest.ffcv_path(split)
    if not path.is_file():
        raise UserError(f"missing FFCV file {path}: re-run `fasthpt prep` with --formats including ffcv")
    return path


def _ffcv_loader(path, batch_size, workers, indices_for_epoch, pipelines, drop_last):
    try:
        loader = compat.open_loader(path, batch_size=batch_size, workers=workers, pipelines=pipelines,
                                    drop_last=drop_last, batches_ahead=BATCHES_AHEAD)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read FFCV file {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    return compat.adopt(loader, indices_for_epoch)


class _DeviceCopies:
    """Host-to-device copies out of FFCV's batch slots (page-locked when CUDA is present, so the
    copies run in the background). FFCV's thread refills a slot on the CPU as soon as the next batch
    is drawn, and its CUDA events only order GPU streams, so a batch's copies must have run, on the
    host's clock, before the next draw: ``compat.batches`` calls ``wait``. The copies queue behind the
    training work already on the stream: the host stays about one step ahead of the device. On the
    CPU both calls do nothing."""

    def __init__(self, device: torch.device):
        self.device = device
        self.event = None

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array)
        if self.device.type != "cuda":
            return t.to(self.device)
        t = t.to(self.device, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record(torch.cuda.current_stream(self.device))
        return t

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()
            self.event = None


def _normalizer(manifest: Manifest, device: torch.device):
    mean = torch.tensor(manifest.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    inv_std = 1.0 / torch.tensor(manifest.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, inv_std


def _layout(layout, device: torch.device, channels_last: bool, bands) -> int:
    """The batch slot's layout: uint8 for a JPEG dataset on CUDA (4x fewer bytes to copy; normalised
    there), else normalised float32 written in the layout the model wants (rasters always: their
    values need float)."""
    if layout is not None:
        return layout
    if device.type == "cuda":
        return K.OUT_U8 if bands is None else K.OUT_HWC
    return K.OUT_HWC if channels_last else K.OUT_CHW


def _nhwc_u8_to_float(x: torch.Tensor, mean, inv_std, channels_last: bool) -> torch.Tensor:
    """uint8 N x H x W x 3 (any device) -> normalised float32 N x 3 x H x W."""
    x = x.permute(0, 3, 1, 2).float()  # keeps the NHWC strides: channels_last
    x = x.sub_(mean).mul_(inv_std)
    return x if channels_last else x.contiguous()


class FFCVAugLoader:
    """Augmented loader over one .beton, ``views`` augmented views per sample, on ``device``:
    2 (SSL): yields (view_q, view_k); 1 (labelled): yields (images, labels int64), over the split or
    the subset ``indices`` of its samples. Views are float32 N x 3 x res x res, normalised."""

    backend = BACKEND

    def __init__(self, manifest: Manifest, *, split, res, batch_size, policy: AugPolicy, workers, device,
                 seed, rank, world_size, drop_last, channels_last, layout=None, debug=False, views=2, indices=None):
        policy.validate()
        self.policy, self.debug, self.views = policy, debug, int(views)
        self.res, self.device, self.channels_last = int(res), torch.device(device), channels_last
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self._subset = subset = common.subset_indices(manifest, split, indices)
        self._per_rank = common.ssl_rank_count(len(subset), world_size)
        common.check_batch(batch_size, self._per_rank, drop_last, f"{manifest.root} {split}")
        self.batch_size, self.drop_last = batch_size, drop_last
        self.bands = spectral.bands_of(manifest)
        self.channels = 3 if self.bands is None else self.bands.bands
        self.layout = _layout(layout, self.device, channels_last, self.bands)
        self._copies = _DeviceCopies(self.device)
        self.key = ops.EpochKey(seed)
        self._mean, self._inv_std = _normalizer(manifest, self.device)
        if self.bands is not None:  # rasters: one operation, finished views (ffcv_raster_ops)
            self.policy = policy = spectral.spectral_policy(policy)
            spec = PipelineSpec("image", decoder=raster_ops.RasterViewsDecoder(res, policy, self.key, self.bands,
                                                                             self.layout, self.views))
        else:
            augment = ops.ViewsAugment(res, policy, self.key, manifest.mean, manifest.std, self.layout, self.views)
            spec = PipelineSpec("image", decoder=ops.ViewsCropDecoder(res, policy, self.key, self.views),
                                transforms=[augment])
        pipelines = {"image": spec, "label": [IntDecoder()] if self.views == 1 else None}
        self._skip = 0  # whole batches of the epoch's order to leave out (a resume mid-epoch)
        self._loader = _ffcv_loader(_beton(manifest, split), batch_size, workers,
                                    lambda e: self.epoch_order(e)[self._skip * batch_size:], pipelines, drop_last)
        self.epoch, self.start = 0, 0
        self._open = None  # the EpochRun in flight: the current epoch's, or the next one started ahead

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's sample indices of ``epoch``, whole batches only with drop_last."""
        order = common.labelled_rank_indices(self._subset, self.rank, self.world_size, self.seed, epoch).numpy()
        return order[: len(self) * self.batch_size] if self.drop_last else order

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self._per_rank

    def __len__(self) -> int:
        return common.num_batches(self._per_rank, self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next pass is ``epoch`` from its batch ``start_batch`` (the ones before are not loaded)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside the epoch's {len(self)} batches")
        self.epoch, self.start = int(epoch), int(start_batch)

    def _run(self, epoch: int, start: int) -> compat.EpochRun:
        """An EpochRun delivering ``epoch`` from batch ``start``: the one started ahead when it is
        that, else a new one (an abandoned or mismatched run is closed first)."""
        run, self._open = self._open, None
        if run is not None and run.position == (epoch, start):
            return run
        if run is not None:
            run.close()
        self.key.set_epoch(epoch)  # read by the compiled code once per batch: set before its thread starts
        self._skip = start
        compat.start_epoch(self._loader, epoch)
        return compat.EpochRun(self._loader, self._copies.wait, (epoch, start))

    def _own(self, out: tuple) -> tuple:
        """The batch, no longer backed by FFCV's slots: views written straight into a CPU slot are
        cloned (one batch), device copies out of a slot are waited for."""
        if self.device.type == "cuda":
            self._copies.wait()
            return out
        return tuple(t.clone() for t in out)

    def __iter__(self):
        # Without set_epoch, successive passes are successive epochs (as FFCV's own Loader does).
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        count = len(self) - start
        if count <= 0:
            return
        run = self._open = self._run(epoch, start)
        run.position = None  # being consumed: not reusable by another pass
        debug = self._debug_epoch(epoch, start) if self.debug else None
        try:
            for b in range(count):
                batch = run.draw()
                if batch is None:
                    raise RuntimeError(f"FFCV ended epoch {epoch} after {b} of {count} batches")
                out = self._to_views(batch[0])
                if self.views == 1:  # a copy: FFCV refills its label buffers once the next batch is drawn
                    out += (torch.tensor(batch[1].reshape(-1), dtype=torch.int64, device=self.device),)
                if b == count - 1:
                    # The epoch's last batch (Composer's islice never asks past it): end the epoch now
                    # and start the next, so that it loads while this batch trains, and FFCV's buffers
                    # are reused (an epoch left unfinished makes the next one allocate them anew).
                    out = self._own(out)
                    if run.draw() is not None:
                        raise RuntimeError(f"FFCV delivered more than the {count} batches of epoch {epoch}")
                    run.close()
                    self._open = self._run(epoch + 1, 0)
                yield out if debug is None else common.DebugBatch.of(out, self.views, *debug[b])
        finally:
            if self._open is run:  # abandoned (a break, an error): stop its thread now
                self._open = None
                run.close()

    def _debug_epoch(self, epoch, start):
        """Per batch: (sample indices, draws), the draws recomputed by fasthpt.data.draws (the
        kernels' numbers, vectorised) from the same keys as the compiled pipeline."""
        order = self.epoch_order(epoch)[start * self.batch_size:]
        heights, widths = self._sizes()
        out = []
        for i in range(0, len(order), self.batch_size):
            idx = order[i: i + self.batch_size]
            view_draws = draws.view_draws(self.key.seed, epoch, idx, heights[idx], widths[idx],
                                          self.policy, self.res, self.views)
            out.append((torch.from_numpy(np.asarray(idx, dtype=np.int64)),
                        tuple({k: torch.as_tensor(v, dtype=common.DRAW_DTYPES[k]) for k, v in d.items()}
                              for d in view_draws)))
        return out

    def _sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every sample's (heights, widths): the image field's metadata, or the raster records' headers."""
        if self.bands is None:
            meta = compat.field_metadata(self._loader.reader, "image")
            return meta["height"], meta["width"]
        return compat.record_sizes(self._loader.reader, "image")

    def _to_views(self, batch: np.ndarray) -> tuple:
        views = []
        for v in ops.split_views(batch, self.res, self.layout, self.channels):
            t = self._copies.to_device(v)
            if self.layout == K.OUT_U8:
                t = _nhwc_u8_to_float(t, self._mean, self._inv_std, self.channels_last)
            elif self.layout == K.OUT_HWC:
                t = t.permute(0, 3, 1, 2)
                t = t if self.channels_last else t.contiguous()
            else:
                t = t.contiguous(memory_format=torch.channels_last) if self.channels_last else t
            views.append(t)
        return tuple(views)


class FFCVEvalLoader:
    """Eval loader: yields (images float32 N x 3 x res x res normalised, labels int64) on ``device``."""

    backend = BACKEND

    def __init__(self, manifest: Manifest, *, split, res, batch_size, workers, device, rank, world_size,
                 channels_last):
        self.device, self.channels_last, self.batch_size = torch.device(device), channels_last, batch_size
        count = manifest.count(split)
        indices = common.eval_rank_indices(count, rank, world_size).numpy()
        self._count = len(indices)
        if self._count == 0:
            raise UserError(f"{manifest.root} {split}: no samples for rank {rank} of {world_size}")
        self._mean, self._inv_std = _normalizer(manifest, self.device)
        self._copies = _DeviceCopies(self.device)
        self.bands = spectral.bands_of(manifest)
        if self.bands is None:  # the paper's resize 256 / crop 224, uint8, normalised on the device
            decoder = ops.CenterCropDecoder(res, common.eval_resize(res))
        else:  # rasters: standardised float32 H x W x C
            decoder = raster_ops.RasterCenterCropDecoder(res, common.eval_resize(res), self.bands, K.OUT_HWC)
        pipelines = {"image": PipelineSpec("image", decoder=decoder), "label": [IntDecoder()]}
        order = lambda e: indices  # noqa: E731
        self._loader = _ffcv_loader(_beton(manifest, split), batch_size, workers, order, pipelines, False)

    @property
    def num_samples(self) -> int:
        return self._count

    def __len__(self) -> int:
        return math.ceil(self._count / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:  # no shuffle: nothing depends on the epoch
        pass

    def __iter__(self):
        for images, labels in compat.batches(self._loader, self._copies.wait):
            x = self._copies.to_device(images)
            if self.bands is None:
                x = _nhwc_u8_to_float(x, self._mean, self._inv_std, self.channels_last)
            else:  # a copy out of FFCV's slot (refilled once the next batch is drawn)
                x = x.permute(0, 3, 1, 2)
                x = x.clone() if self.channels_last else x.contiguous()
            # a copy: FFCV refills its label buffers once the next batch is drawn, and callers keep labels
            y = torch.tensor(labels.reshape(-1), dtype=torch.int64, device=self.device)
            yield x, y


def _per_part(build_one, manifest: Manifest, split: str, seed: int):
    """One loader per part of a joined split ("train+val": one .beton each), batches interleaved
    (common.InterleavedLoader); each part draws under its own key."""
    parts = common.split_parts(split)
    if len(parts) == 1:
        return build_one(split, seed)
    return common.InterleavedLoader([build_one(part, common.part_seed(seed, i)) for i, part in enumerate(parts)],
                                    seed)


def build_ssl_loader(manifest: Manifest, *, split: str, res: int, batch_size: int, policy: AugPolicy,
                     workers: int, device: torch.device, seed: int, rank: int, world_size: int,
                     drop_last: bool, channels_last: bool, indices=None, debug: bool = False):
    """See fasthpt.data. debug=True: batches are common.DebugBatch (two views, no labels, the
    sample indices and each view's draws: crop, jitter, order, factors, gray, blur, sigma, flip)."""
    if indices is not None and len(common.split_parts(split)) > 1:
        raise UserError(f"a subset of samples needs a single split, not {split!r}")
    return _per_part(lambda part, part_seed: FFCVAugLoader(
        manifest, split=part, res=res, batch_size=batch_size, policy=policy, workers=workers, device=device,
        seed=part_seed, rank=rank, world_size=world_size, drop_last=drop_last, channels_last=channels_last,
        debug=debug, indices=indices), manifest, split, seed)


def build_labelled_loader(manifest: Manifest, *, split: str, res: int, batch_size: int, workers: int,
                          device: torch.device, seed: int, rank: int, world_size: int, channels_last: bool,
                          indices=None, debug: bool = False):
    """See fasthpt.data: the SSL pipeline with one view, the labelled policy and the label field.
    debug=True: batches are common.DebugBatch (one view, the labels, the sample indices, the draws)."""
    if indices is not None and len(common.split_parts(split)) > 1:
        raise UserError(f"a subset of samples needs a single split, not {split!r}")
    return _per_part(lambda part, part_seed: FFCVAugLoader(
        manifest, split=part, res=res, batch_size=batch_size, policy=common.labelled_policy(), workers=workers,
        device=device, seed=part_seed, rank=rank, world_size=world_size, drop_last=True,
        channels_last=channels_last, debug=debug, views=1, indices=indices), manifest, split, seed)


def ffcv_labels(manifest: Manifest, split: str) -> torch.Tensor:
    """Labels of ``split`` in sample order, from the .beton's 'label' field metadata (no image decoded)."""
    labels = []
    for part in common.split_parts(split):
        path = _beton(manifest, part)
        try:
            values = compat.read_field(path, "label")
        except (OSError, ValueError, AssertionError) as exc:
            raise UserError(f"cannot read FFCV file {path}: {exc}") from None
        if values is None:
            raise UserError(f"{path} has no label field; re-run `fasthpt prep`")
        labels.append(torch.from_numpy(np.asarray(values, dtype=np.int64).reshape(-1).copy()))
    return torch.cat(labels)


def build_eval_loader(manifest: Manifest, *, split: str, res: int, batch_size: int, workers: int,
                      device: torch.device, rank: int, world_size: int, channels_last: bool) -> FFCVEvalLoader:
    return FFCVEvalLoader(manifest, split=split, res=res, batch_size=batch_size, workers=workers, device=device,
                          rank=rank, world_size=world_size, channels_last=channels_last)
