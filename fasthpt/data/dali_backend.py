"""`dali` backend: WebDataset shards -> NVIDIA DALI pipeline -> two augmented views per decode.

On a CUDA device the JPEGs are decoded with ``device='mixed'`` (nvJPEG) and augmented on the GPU;
without CUDA the same graph runs on the CPU (``device_id=None``), logged once.

Speed choices (augmentation, not decode, is the CPU wall: bench/RESULTS.md's decode row):
- one decode per image, two views cropped from it (resize with a region of interest: crop and
  resize are one pass);
- colour jitter + grayscale are ONE per-pixel affine pass (``fn.coord_transform``): brightness,
  contrast, saturation and a hue rotation in YIQ space are all affine in RGB, so their composition
  is ``M x + T``; grayscale is saturation 0. Without intermediate clamping these operations commute,
  so ColorJitter's random order does not matter; torchvision clamps after each op and shifts hue
  in HSV, so saturated pixels can differ (tests/data/test_dali_backend.py states the tolerances);
- each random op runs only on the samples that drew it (DALI conditionals), and the blur kernel is
  sized by sigma: radius ceil(3 sigma), capped at ~10% of res (policy.blur_kernel_cap);
- flip, normalisation and the layout change are one ``crop_mirror_normalize`` pass.

Epochs: one pipeline runs consecutive epochs (no rebuild between them: at 64 px a rebuild costs as
much as an epoch of a small dataset); its reader moves each rank to the next shard every epoch. A
``set_epoch`` that is not the next epoch (a resume, a repeat) builds a pipeline seeded from
(seed, epoch, rank) whose shard is (rank + epoch) mod world_size, so runs repeat exactly. The reader
pads every shard to whole batches of the largest shard (``pad_last_batch``); the iterator runs the
reader's epoch to its end and yields only ``num_samples`` real samples (common.py's sharding
rules). DALI's reader shuffles within a buffer (``initial_fill``), not globally: `fasthpt prep`
writes shards in random order; a joined split ("train+val") lists its parts' shards interleaved.

Labelled loader (linear probe, fine-tuning): the same view graph with the labelled policy (crop and
flip only) and one view, fed by ``fn.external_source`` with JPEG bytes read by offset in the order
of common.labelled_rank_indices (the torch and ffcv backends' order, an exact permutation of the
split or of a subset of it per epoch: the webdataset reader can do neither), labels alongside.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from fasthpt.data import common
from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError
from fasthpt.manifest import Manifest

BACKEND = "dali"
SHUFFLE_BUFFER = 4096  # encoded samples held for shuffling (DALI's default is 1024)

# ITU-R 601-2 luma, the weights of torchvision's rgb_to_grayscale (and of YIQ's Y).
LUMA = np.array([0.299, 0.587, 0.114])
# RGB -> YIQ (NTSC 1953 coefficients, as in colorsys); a hue shift is a rotation of the (I, Q) plane.
YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def colour_basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P0, P1, P2 with jitter(x) = cb (P0 + s cos(t) P1 + s sin(t) P2) x + (1 - c) b mean_gray(x):
    P0 projects on gray (1 w^T), P1 = I - P0 keeps the chroma, P2 turns the chroma by 90 degrees."""
    p0 = np.outer(np.ones(3), LUMA)
    p1 = np.eye(3) - p0
    # the turn from I towards -Q: the direction in which torchvision's adjust_hue moves hue
    # (red -> yellow -> green for a positive factor); DALI's own fn.hsv turns the other way
    quarter = np.array([[0, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)
    p2 = np.linalg.inv(YIQ) @ quarter @ YIQ
    return p0, p1, p2


def colour_matrix(b: float, c: float, s: float, h: float, gray: bool = False, mean_gray: float = 0.0):
    """NumPy twin of the in-pipeline colour transform, (M 3x3, T 3): for fixed-parameter tests."""
    p0, p1, p2 = colour_basis()
    s = 0.0 if gray else s
    theta = 2 * math.pi * h
    m = c * b * (p0 + s * math.cos(theta) * p1 + s * math.sin(theta) * p2)
    return m, np.full(3, (1 - c) * b * mean_gray)


def _dali():
    try:
        import nvidia.dali as dali  # noqa: F401
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
    except ImportError as exc:
        raise UserError(f"DALI is not importable ({exc}): pip install nvidia-dali-cuda120==2.4.0") from None
    return fn, dmath, types


_logged_cpu = False


def _on_gpu(device: torch.device) -> bool:
    global _logged_cpu
    if device.type == "cuda" and torch.cuda.is_available():
        return True
    if not _logged_cpu:
        common.log.warning("dali: no CUDA device, running the DALI pipeline on the CPU (device_id=None)")
        _logged_cpu = True
    return False


def _coin(fn, types, p: float):
    return fn.random.coin_flip(probability=p, dtype=types.BOOL)


def _uniform(fn, types, low: float, high: float):
    """Per-sample U(low, high); a constant when the range is a point (DALI refuses empty ranges)."""
    return fn.random.uniform(range=[low, high]) if high > low else _const(fn, types, low, types.FLOAT)


def _resize_roi(fn, types, images, anchor, size, res: int):
    """Crop (anchor, size: (y, x), (h, w)) and resize to res x res in one pass (linear, antialiased)."""
    start = fn.cast(anchor, dtype=types.FLOAT)
    end = start + fn.cast(size, dtype=types.FLOAT)
    return fn.resize(images, roi_start=start, roi_end=end, size=[res, res], antialias=True)


def _crop(fn, types, images, shape, policy: AugPolicy, res: int):
    """Random-resized crop (torchvision's algorithm: area and log-ratio draws, 10 tries, center
    fallback); returns (view, anchor, size)."""
    anchor, size = fn.random_crop_generator(
        shape, random_area=list(policy.crop_scale), random_aspect_ratio=list(policy.crop_ratio)
    )
    return _resize_roi(fn, types, images, anchor, size, res), anchor, size


def _colour(fn, dmath, types, view, factors, jitter, gray):
    """Jitter (if drawn) then grayscale (if drawn) as one affine pass on the pixels (module doc)."""
    b, c, s, h = factors
    j = fn.cast(jitter, dtype=types.FLOAT)
    b1, c1 = 1.0 + j * (b - 1.0), 1.0 + j * (c - 1.0)
    s1 = (1.0 - fn.cast(gray, dtype=types.FLOAT)) * (1.0 + j * (s - 1.0))
    theta = j * h * (2 * math.pi)
    p0, p1, p2 = (types.Constant(p.astype(np.float32)) for p in colour_basis())
    scale = c1 * b1
    m = scale * p0 + (scale * s1 * dmath.cos(theta)) * p1 + (scale * s1 * dmath.sin(theta)) * p2
    # contrast blends towards the mean gray level of the (brightness-scaled) view, as torchvision does
    means = fn.reductions.mean(view, dtype=types.FLOAT, axes=[0, 1])
    mean_gray = means[0] * float(LUMA[0]) + means[1] * float(LUMA[1]) + means[2] * float(LUMA[2])
    if view.device == "gpu":
        # the mean lives on the GPU, and operator arguments (M, T) must come from the CPU: add the
        # offset with a GPU arithmetic op instead of passing T
        offset = ((1.0 - c1) * b1).gpu() * mean_gray
        out = fn.coord_transform(view, M=m, dtype=types.FLOAT)
        return fn.cast(dmath.clamp(out + offset, 0.0, 255.0), dtype=types.UINT8)
    offset = (1.0 - c1) * b1 * mean_gray
    return fn.coord_transform(view, M=m, T=fn.stack(offset, offset, offset), dtype=types.UINT8)


def _blur_window(fn, dmath, types, sigma, policy: AugPolicy, res: int):
    """Odd window 2 ceil(3 sigma) + 1 capped at policy.blur_kernel_cap: policy.blur_kernel_size in the graph."""
    cap = float(policy.blur_kernel_cap(res))
    return fn.cast(dmath.min(2.0 * dmath.ceil(3.0 * sigma) + 1.0, cap), dtype=types.INT32)


def _view(fn, dmath, types, images, shape, policy: AugPolicy, res: int, norm: dict):
    """One augmented, normalised view; also returns every random draw (for debug outputs)."""
    view, anchor, size = _crop(fn, types, images, shape, policy, res)
    # no colour factors (e.g. the no-color ablation): the jitter coin never lands
    jitter = _coin(fn, types, policy.jitter_p if policy.uses_color else 0.0)
    gray = _coin(fn, types, policy.gray_p)
    factors = [_uniform(fn, types, max(0.0, 1 - v), 1 + v) for v in
               (policy.brightness, policy.contrast, policy.saturation)]
    factors.append(_uniform(fn, types, -policy.hue, policy.hue))
    blur, flip = _coin(fn, types, policy.blur_p), _coin(fn, types, policy.flip_p)
    sigma = _uniform(fn, types, *policy.sigma_range(res))
    if policy.uses_color or policy.gray_p > 0:  # static: the op is left out of the graph entirely
        if jitter | gray:  # DALI conditional: only the samples that drew it pay for the pass
            view = _colour(fn, dmath, types, view, factors, jitter, gray)
    if policy.blur_p > 0:
        if blur:
            window = _blur_window(fn, dmath, types, sigma, policy, res)
            view = fn.gaussian_blur(view, sigma=sigma, window_size=window)
    view = fn.crop_mirror_normalize(view, mirror=fn.cast(flip, dtype=types.INT32), dtype=types.FLOAT, **norm)
    draws = [anchor, size, jitter, gray, blur, flip, sigma] + factors
    return view, draws


# The debug outputs of one view, in the order _view returns them.
DRAW_NAMES = ("anchor", "size", "jitter", "gray", "blur", "flip", "sigma", "brightness", "contrast",
              "saturation", "hue")


def _draws(outputs, n: int) -> tuple:
    """The debug outputs (DRAW_NAMES per view, one view after the other) as DebugBatch.draws."""
    tensors = [_to_torch(t, torch.device("cpu"))[:n] for t in outputs]
    step = len(DRAW_NAMES)
    return tuple(_view_draws(dict(zip(DRAW_NAMES, tensors[i: i + step])), n) for i in range(0, len(tensors), step))


def _view_draws(d: dict, n: int) -> dict:
    """One view's draws keyed as common.DRAW_DTYPES: crop is (anchor, size) = (top, left, h, w)."""
    crop = torch.cat([d["anchor"].reshape(n, 2), d["size"].reshape(n, 2)], 1)
    factors = torch.stack([d[k].reshape(n) for k in ("brightness", "contrast", "saturation", "hue")], 1)
    out = {k: d[k].reshape(n) for k in ("jitter", "gray", "blur", "sigma", "flip")}
    out.update(crop=crop, factors=factors)
    return {k: t.to(common.DRAW_DTYPES[k]) for k, t in out.items()}


def _index_count(path) -> int:
    """Samples listed by a DALI WebDataset index: its header is 'v1.2 <count>' (wds2idx format)."""
    with open(path) as handle:
        header = handle.readline().split()
    try:
        if not header[0].startswith("v"):
            raise ValueError(header[0])
        return int(header[1])
    except (IndexError, ValueError):
        raise UserError(f"unreadable DALI index file {path}: re-run `fasthpt prep`") from None


def _shard_files(manifest: Manifest, split: str) -> tuple[list[str], list[str]]:
    """The split's shards and index files, checked against the manifest (before any work starts).
    A joined split ("train+val") spreads each part's shards evenly through the list (_spread)."""
    shards = _spread([manifest.wds_shards(part) for part in common.split_parts(split)])
    indexes = [p.with_suffix(".idx") for p in shards]
    missing = [str(p) for p in shards + indexes if not p.is_file()]
    if missing:
        raise UserError(f"missing WebDataset file {missing[0]} (and {len(missing) - 1} more): re-run `fasthpt prep`")
    indexed = sum(_index_count(p) for p in indexes)
    expected = common.split_count(manifest, split)
    if indexed != expected:  # the epoch length is computed from the manifest's count
        raise UserError(f"{manifest.root}: manifest says {expected} {split} samples, the DALI index "
                        f"files list {indexed}; re-run `fasthpt prep`")
    return [str(p) for p in shards], [str(p) for p in indexes]


def _spread(parts: list[list]) -> list:
    """The parts' items merged by their relative position within their part: the reader walks the
    shards in list order and shuffles only within its buffer, so appended val shards would all come
    at the end of every epoch; spread out, they come throughout it."""
    keyed = [((i + 0.5) / len(items), p, item) for p, items in enumerate(parts) for i, item in enumerate(items)]
    return [item for _, _, item in sorted(keyed, key=lambda k: k[:2])]


def _reader(fn, files, shard_id: int, num_shards: int, shuffle: bool, fill: int):
    # SSL (shuffle): the shard moves on by one each epoch, so ranks see different data over epochs;
    # eval sticks to its shard, so every pass is the same.
    shards, indexes = files
    return fn.readers.webdataset(
        paths=shards, index_paths=indexes, ext=["jpg", "cls"],
        missing_component_behavior="error", shard_id=shard_id, num_shards=num_shards,
        random_shuffle=shuffle, initial_fill=max(1, fill), pad_last_batch=True, stick_to_shard=not shuffle,
        name="reader",
    )


def _norm_args(manifest: Manifest, channels_last: bool) -> dict:
    # NHWC out of DALI + a permute in torch gives a channels_last NCHW tensor without a copy.
    return dict(mean=manifest.mean, std=manifest.std, output_layout="HWC" if channels_last else "CHW")


def _ssl_pipeline(manifest, files, policy, res, gpu, shard_id, num_shards, fill, channels_last, debug, **kw):
    from nvidia.dali import pipeline_def

    fn, dmath, types = _dali()

    @pipeline_def(enable_conditionals=True, **kw)
    def ssl():
        jpegs, labels = _reader(fn, files, shard_id, num_shards, True, fill)
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        shape = fn.peek_image_shape(jpegs)
        norm = _norm_args(manifest, channels_last)
        (q, draws_q), (k, draws_k) = (_view(fn, dmath, types, images, shape, policy, res, norm) for _ in range(2))
        return (q, k, labels, *draws_q, *draws_k) if debug else (q, k)

    return ssl()


def _center_anchor(fn, dmath, types, images, res: int):
    """torchvision's center_crop anchor, int(round((side - res) / 2)) with Python's round-half-to-even
    (DALI's own centre crop rounds halves up: a one-pixel shift on odd margins)."""
    hw = fn.cast(images.shape()[0:2], dtype=types.FLOAT)
    margin = hw - float(res)
    half = dmath.floor(margin / 2.0)
    odd = margin - 2.0 * half
    half_is_odd = half - 2.0 * dmath.floor(half / 2.0)
    return fn.cast(half + odd * half_is_odd, dtype=types.INT32)


def _eval_pipeline(manifest, files, res, gpu, shard_id, num_shards, channels_last, **kw):
    from nvidia.dali import pipeline_def

    fn, dmath, types = _dali()

    @pipeline_def(**kw)
    def evaluation():
        jpegs, labels = _reader(fn, files, shard_id, num_shards, False, 1)
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.resize(images, resize_shorter=common.eval_resize(res), antialias=True)
        images = fn.slice(images, start=_center_anchor(fn, dmath, types, images, res), shape=[res, res], axes=[0, 1])
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, **_norm_args(manifest, channels_last))
        return images, labels

    return evaluation()


class _LabelledSource:
    """``fn.external_source`` callback of the labelled pipeline: for batch ``info.iteration`` (counted
    from ``first_epoch``, ``batches`` per epoch), the JPEG bytes, labels and sample indices of this
    rank's permutation of the subset (common.labelled_rank_indices: the torch and ffcv backends'
    order), read by offset from the shards (common.index_wds). A pure function of the iteration, so
    DALI may call it ahead of the batches it runs. ``os.pread``: no shared file position."""

    def __init__(self, shards, samples, subset, *, batch_size, batches, seed, rank, world_size, first_epoch):
        self.shards, self.samples, self.subset = shards, samples, subset
        self.batch_size, self.batches, self.first_epoch = batch_size, batches, first_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._order = (None, None)
        self._fds: dict[int, int] = {}

    def order(self, epoch: int):
        if self._order[0] != epoch:
            self._order = (epoch, common.labelled_rank_indices(self.subset, self.rank, self.world_size, self.seed,
                                                               epoch).tolist())
        return self._order[1]

    def _bytes(self, sample) -> np.ndarray:
        fd = self._fds.get(sample.shard)
        if fd is None:
            fd = self._fds[sample.shard] = os.open(self.shards[sample.shard], os.O_RDONLY)
        return np.frombuffer(os.pread(fd, sample.size, sample.offset), dtype=np.uint8)

    def __call__(self, info):
        epoch, b = divmod(info.iteration, self.batches)
        chosen = self.order(self.first_epoch + epoch)[b * self.batch_size: (b + 1) * self.batch_size]
        samples = [self.samples[i] for i in chosen]
        return ([self._bytes(s) for s in samples], [np.array([s.label], np.int64) for s in samples],
                [np.array([i], np.int64) for i in chosen])

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)


def _labelled_pipeline(manifest, source, res, gpu, channels_last, debug, **kw):
    """Decode (nvJPEG on a GPU) and one crop-and-flip view per sample: the SSL view graph (_view)
    under the labelled policy, which leaves colour, gray and blur out of the graph."""
    from nvidia.dali import pipeline_def

    fn, dmath, types = _dali()

    @pipeline_def(enable_conditionals=True, **kw)
    def labelled():
        jpegs, labels, index = fn.external_source(source=source, num_outputs=3, batch=True, batch_info=True)
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        shape = fn.peek_image_shape(jpegs)
        norm = _norm_args(manifest, channels_last)
        view, draws = _view(fn, dmath, types, images, shape, common.labelled_policy(), res, norm)
        return (view, labels, index, *draws) if debug else (view, labels)

    return labelled()


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = tensor_list.as_tensor()
    out = torch.empty(dense.shape(), dtype=_TORCH_DTYPES[str(dense.dtype)], device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device) if device.type == "cuda" else None)
    return out


_TORCH_DTYPES = {"DALIDataType.FLOAT": torch.float32, "DALIDataType.UINT8": torch.uint8,
                 "DALIDataType.INT64": torch.int64, "DALIDataType.BOOL": torch.bool,
                 "DALIDataType.INT32": torch.int32}


def _labels(tensor_list) -> torch.Tensor:
    # .cls members hold the label as ASCII digits (WebDataset convention)
    return torch.tensor([int(bytes(np.asarray(tensor_list[i])).decode()) for i in range(len(tensor_list))],
                        dtype=torch.int64)


class DaliLoader:
    """Runs one pipeline across consecutive epochs and trims the reader's padding (module doc)."""

    backend = BACKEND

    def __init__(self, build, *, num_samples, batch_size, drop_last, device, channels_last, kind, debug=False):
        self.build, self.num_samples, self.batch_size = build, num_samples, batch_size
        self.device, self.channels_last, self.kind, self.debug = device, channels_last, kind, debug
        self._len = common.num_batches(num_samples, batch_size, drop_last)
        self.epoch = 0
        self._pipe = None
        self._pipe_epoch = None  # the epoch the pipeline's reader will deliver next

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self._len

    def pipeline(self):
        """A pipeline positioned at the start of ``self.epoch``: the running one when it has just
        finished the previous epoch (SSL, labelled; eval repeats itself), else a new one seeded for this epoch."""
        if self._pipe is None or self._pipe_epoch != self.epoch:
            self._pipe = None  # release the old pipeline's threads and buffers first
            self._pipe = self.build(self.epoch)
            self._pipe.build()
            self._pipe_epoch = self.epoch
        return self._pipe

    def _reader_batches(self, pipe) -> int:
        if self.kind == "labelled":  # its source yields exactly the epoch's full batches
            return self._len
        meta = pipe.reader_meta("reader")  # every shard padded to the largest one, then to whole batches
        return math.ceil(meta["epoch_size_padded"] // meta["number_of_shards"] / self.batch_size)

    def _images(self, tensor_list, n):
        x = _to_torch(tensor_list, self.device)[:n]
        return x.permute(0, 3, 1, 2) if self.channels_last else x

    def _batch(self, outputs, n):
        if self.kind == "labelled":
            labels = _to_torch(outputs[1], torch.device("cpu")).view(-1).to(self.device)
            if self.debug:
                index = _to_torch(outputs[2], torch.device("cpu")).view(-1)
                return common.DebugBatch((self._images(outputs[0], n),), labels, index, _draws(outputs[3:], n))
            return self._images(outputs[0], n), labels
        if self.kind == "eval":
            return self._images(outputs[0], n), _labels(outputs[1])[:n].to(self.device)
        views = self._images(outputs[0], n), self._images(outputs[1], n)
        if self.debug:
            keys = [outputs[2][i].source_info() for i in range(n)]
            return common.DebugBatch(views, _labels(outputs[2])[:n], None, _draws(outputs[3:], n), keys)
        return views

    def __iter__(self):
        pipe = self.pipeline()
        self._pipe_epoch = None  # mid-epoch until the reader's epoch has been run to its end
        remaining = self.num_samples
        for i in range(self._reader_batches(pipe)):
            outputs = pipe.run()
            if i < self._len:  # batches past len() only finish the reader's epoch (padding, leftovers)
                n = min(self.batch_size, remaining)
                remaining -= n
                yield self._batch(outputs, n)
        self._pipe_epoch = self.epoch if self.kind == "eval" else self.epoch + 1


def _pipe_kwargs(batch_size, workers, device: torch.device, gpu: bool, seed: int) -> dict:
    device_id = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None
    # exec_dynamic: DALI 2.4's default for these settings, stated because the eval pipeline reads a
    # GPU node's shape (images.shape()), which needs it
    return dict(batch_size=batch_size, num_threads=max(1, workers), device_id=device_id, seed=seed,
                prefetch_queue_depth=2, exec_dynamic=True)


def _shard_size(count: int, shard_id: int, num_shards: int) -> int:
    # DALI's reader gives shard i the samples [count*i // n, count*(i+1) // n)
    return count * (shard_id + 1) // num_shards - count * shard_id // num_shards


def build_ssl_loader(manifest: Manifest, *, split, res, batch_size, policy, workers, device, seed, rank,
                     world_size, drop_last, channels_last, debug: bool = False) -> DaliLoader:
    """Two-view loader. ``debug``: batches are common.DebugBatch (two views, the labels, no sample
    indices but each sample's key, each view's draws: no jitter order, the colour pass has none)."""
    policy = policy.validate()
    gpu = _on_gpu(device)
    count = common.split_count(manifest, split)
    per_rank = common.ssl_rank_count(count, world_size)
    common.check_batch(batch_size, per_rank, drop_last, f"{split} split")
    fill = min(SHUFFLE_BUFFER, per_rank + 1)
    files = _shard_files(manifest, split)

    def build(epoch):
        shard = (rank + epoch) % world_size  # rotate the data among ranks from epoch to epoch
        kw = _pipe_kwargs(batch_size, workers, device, gpu, common.epoch_seed(seed, epoch, rank) % 2**31)
        return _ssl_pipeline(manifest, files, policy, res, gpu, shard, world_size, fill, channels_last, debug, **kw)

    return DaliLoader(build, num_samples=per_rank, batch_size=batch_size, drop_last=drop_last, device=device,
                      channels_last=channels_last, kind="ssl", debug=debug)


def build_labelled_loader(manifest: Manifest, *, split, res, batch_size, workers, device, seed, rank, world_size,
                          channels_last, indices=None, debug: bool = False) -> DaliLoader:
    """One labelled crop-and-flip view per sample, full batches, an exact permutation per epoch.
    ``debug``: batches are common.DebugBatch (one view, the labels, the sample indices, the draws)."""
    gpu = _on_gpu(device)
    _shard_files(manifest, split)  # the files exist and agree with the manifest
    shards = common.split_wds_shards(manifest, split)
    samples = common.require_labels(manifest, split, common.index_wds(shards))
    subset = common.subset_indices(manifest, split, indices)
    per_rank = common.ssl_rank_count(len(subset), world_size)
    common.check_batch(batch_size, per_rank, True, f"{split} split")
    batches = per_rank // batch_size

    def build(epoch):
        source = _LabelledSource([str(p) for p in shards], samples, subset, batch_size=batch_size, batches=batches,
                                 seed=seed, rank=rank, world_size=world_size, first_epoch=epoch)
        kw = _pipe_kwargs(batch_size, workers, device, gpu, common.epoch_seed(seed, epoch, rank) % 2**31)
        return _labelled_pipeline(manifest, source, res, gpu, channels_last, debug, **kw)

    return DaliLoader(build, num_samples=batches * batch_size, batch_size=batch_size, drop_last=True, device=device,
                      channels_last=channels_last, kind="labelled", debug=debug)


def build_eval_loader(manifest: Manifest, *, split, res, batch_size, workers, device, rank, world_size,
                      channels_last) -> DaliLoader:
    gpu = _on_gpu(device)
    n = _shard_size(manifest.count(split), rank, world_size)
    files = _shard_files(manifest, split)
    common.check_batch(batch_size, n, False, f"{split} split")

    def build(epoch):
        kw = _pipe_kwargs(batch_size, workers, device, gpu, 0)
        return _eval_pipeline(manifest, files, res, gpu, rank, world_size, channels_last, **kw)

    return DaliLoader(build, num_samples=n, batch_size=batch_size, drop_last=False, device=device,
                      channels_last=channels_last, kind="eval")


def _const(fn, types, value, dtype):
    """A per-sample constant node (the fixed parameters of apply_fixed)."""
    arr = np.asarray(value, dtype=np.float32)
    node = fn.constant(fdata=arr.ravel().tolist(), shape=list(arr.shape), dtype=types.FLOAT)
    return fn.cast(node, dtype=dtype) if dtype != types.FLOAT else node


def apply_fixed(images: list[np.ndarray], op: str, **p) -> list[np.ndarray]:
    """Run ONE operation of the view graph on HWC uint8 images with fixed parameters (CPU), for the
    tests that compare each operation with its torchvision reference. ops and parameters:
    crop (anchor=(y, x), size=(h, w), res); colour (b, c, s, h, gray); blur (sigma, window);
    flip (); normalise (mean, std)."""
    from nvidia.dali import pipeline_def

    fn, dmath, types = _dali()

    @pipeline_def(batch_size=len(images), num_threads=1, device_id=None, seed=0)
    def one_op():
        x = fn.external_source(source=lambda: images, layout="HWC", batch=True)
        if op == "crop":
            anchor, size = (_const(fn, types, p[k], types.INT32) for k in ("anchor", "size"))
            return _resize_roi(fn, types, x, anchor, size, p["res"])
        if op == "colour":
            factors = [_const(fn, types, p[k], types.FLOAT) for k in ("b", "c", "s", "h")]
            flags = [_const(fn, types, v, types.BOOL) for v in (True, p.get("gray", False))]
            return _colour(fn, dmath, types, x, factors, *flags)
        if op == "blur":
            return fn.gaussian_blur(x, sigma=p["sigma"], window_size=p["window"])
        if op == "flip":
            return fn.crop_mirror_normalize(x, mirror=1, mean=0.0, std=1.0, dtype=types.UINT8, output_layout="HWC")
        if op == "normalise":
            return fn.crop_mirror_normalize(x, mean=p["mean"], std=p["std"], dtype=types.FLOAT, output_layout="CHW")
        raise ValueError(f"unknown op {op!r}")

    pipe = one_op()
    pipe.build()
    (out,) = pipe.run()
    return [np.array(out[i]) for i in range(len(images))]
