"""`dali` backend: WebDataset shards -> NVIDIA DALI pipeline -> augmented views, one pipeline per loader.

On a CUDA device the JPEGs are decoded with ``device='mixed'`` (nvJPEG) and augmented on the GPU;
without CUDA the same graph runs on the CPU (``device_id=None``), logged once.

What the pipeline is fed (``_Source``, DALI's ``fn.external_source``): for each batch, the encoded
samples read by offset from the shards (common.index_wds) in the order of common.ssl_rank_indices
(the torch and ffcv backends' order: an exact permutation of the split, or of a subset of it, per
epoch and rank) and every random draw of every view, computed in Python by fasthpt.data.draws from
(seed, epoch, sample index, view): the `ffcv` backend's keys and numbers. The pipeline itself draws
nothing, so a batch is a pure function of (epoch, batch number), and ONE pipeline serves every
epoch however the loader is iterated: the source maps each of its iterations to an (epoch, batch),
planning ahead the epoch after the current one; a pass that starts elsewhere (``set_epoch`` to an
epoch other than the next, a resume at ``start_batch``, an abandoned pass) re-plans the source and
drops the few batches DALI had already prefetched (at most ``prefetch_queue_depth``). Composer's
``islice`` over ``len(loader)`` batches therefore costs nothing between epochs (it used to build a
new pipeline per epoch: 66% data stall on an H200), and DALI prefetches across epoch boundaries.

Speed choices (augmentation, not decode, is the CPU wall: bench/RESULTS.md's decode row):
- one decode per image, two views cropped from it (resize with a region of interest: crop and
  resize are one pass);
- colour jitter + grayscale are ONE per-pixel affine pass (``fn.coord_transform``): brightness,
  contrast, saturation and a hue rotation in YIQ space are all affine in RGB, so their composition
  is ``M x + T``; grayscale is saturation 0. Without intermediate clamping these operations commute,
  so ColorJitter's random order does not matter; torchvision clamps after each op and shifts hue
  in HSV. Measured on the default policy's draws over photo-like images (tests/data/
  test_dali_backend.py): brightness/contrast/saturation within ~1.5 levels of 255 on average, the
  hue ~6 levels on average and ~20 at the 95th percentile: DALI's colour views are not torchvision's
  (the `ffcv` and `torch` backends are; choose them where that matters);
- each random op runs only on the samples that drew it (DALI conditionals), and the blur kernel is
  sized by sigma: radius ceil(3 sigma), capped at ~10% of res (policy.blur_kernel_cap);
- flip, normalisation and the layout change are one ``crop_mirror_normalize`` pass.

Kinds: SSL (two views, the run's policy), labelled (one view, the labelled policy: crop and flip,
for the linear probe and fine-tuning; an exact permutation of the split or of a subset per epoch)
and eval (resize + centre crop, every sample of the rank once, the same every pass).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from fasthpt.data import common, draws, spectral
from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError
from fasthpt.manifest import Manifest
from fasthpt.raster_format import npy_array

BACKEND = "dali"

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


def _resize_roi(fn, types, images, anchor, size, res: int, raster: bool = False):
    """Crop (anchor, size: (y, x), (h, w)) and resize to res x res in one pass (linear, antialiased);
    rasters come out as float32 in stored units."""
    if raster:
        region = fn.slice(images, start=anchor, shape=size, axes=[0, 1])
        return fn.resize(region, size=[res, res], antialias=True, dtype=types.FLOAT)
    start = fn.cast(anchor, dtype=types.FLOAT)
    end = start + fn.cast(size, dtype=types.FLOAT)
    return fn.resize(images, roi_start=start, roi_end=end, size=[res, res], antialias=True)


def _raster_jitter(fn, dmath, types, view, b, c, bands):
    """fasthpt.data.spectral's jitter: b (c x + (1 - c) mean_band(x)), clamped to each band's range."""
    if view.device == "gpu":  # arithmetic mixes GPU data with CPU per-sample scalars only when told
        b, c = b.gpu(), c.gpu()
    means = fn.reductions.mean(view, axes=[0, 1])  # per band
    out = b * (c * view + (1.0 - c) * means)
    return dmath.clamp(out, types.Constant(bands.lo), types.Constant(bands.hi))


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



def _view(fn, dmath, types, images, d: dict, policy: AugPolicy, res: int, norm: dict, bands=None):
    """One augmented, normalised view from the draw nodes ``d`` (names of _DRAW_OUTPUTS); ``bands``
    (fasthpt.data.spectral.Bands): a raster's view, float32 from the crop on."""
    view = _resize_roi(fn, types, images, d["anchor"], d["size"], res, raster=bands is not None)
    if bands is not None:
        if policy.uses_color:
            if d["jitter"]:
                view = _raster_jitter(fn, dmath, types, view, d["b"], d["c"], bands)
    elif policy.uses_color or policy.gray_p > 0:  # static: the op is left out of the graph entirely
        if d["jitter"] | d["gray"]:  # DALI conditional: only the samples that drew it pay for the pass
            view = _colour(fn, dmath, types, view, [d[k] for k in ("b", "c", "s", "h")], d["jitter"], d["gray"])
    if policy.blur_p > 0:
        if d["blur"]:
            window = _blur_window(fn, dmath, types, d["sigma"], policy, res)
            view = fn.gaussian_blur(view, sigma=d["sigma"], window_size=window)
    return fn.crop_mirror_normalize(view, mirror=d["flip"], dtype=types.FLOAT, **norm)


# One view's draws as the source feeds them: name -> (DALI type name, ndim per sample).
_DRAW_OUTPUTS = {"anchor": ("INT32", 1), "size": ("INT32", 1), "jitter": ("BOOL", 0), "gray": ("BOOL", 0),
                 "blur": ("BOOL", 0), "flip": ("INT32", 0), "sigma": ("FLOAT", 0), "b": ("FLOAT", 0),
                 "c": ("FLOAT", 0), "s": ("FLOAT", 0), "h": ("FLOAT", 0)}


def _used_draws(policy: AugPolicy, raster: bool = False) -> list[str]:
    """The names of _DRAW_OUTPUTS the policy's graph reads (ops the policy never applies are left
    out of the graph, and their draws are not fed); a raster's jitter reads b and c only."""
    names = ["anchor", "size", "flip"]
    if raster and policy.uses_color:
        names += ["jitter", "b", "c"]
    elif not raster and (policy.uses_color or policy.gray_p > 0):
        names += ["jitter", "gray", "b", "c", "s", "h"]
    if policy.blur_p > 0:
        names += ["blur", "sigma"]
    return [n for n in _DRAW_OUTPUTS if n in names]


def _draw_arrays(d: dict, names: list[str]) -> list[np.ndarray]:
    """One view's draws (fasthpt.data.draws.view_draws) as the arrays of _DRAW_OUTPUTS ``names``."""
    crop = d["crop"].astype(np.int32)
    factors = d["factors"].astype(np.float32)
    arrays = {"anchor": crop[:, :2], "size": crop[:, 2:], "jitter": d["jitter"], "gray": d["gray"],
              "blur": d["blur"], "flip": d["flip"].astype(np.int32), "sigma": d["sigma"].astype(np.float32),
              **{k: factors[:, i] for i, k in enumerate("bcsh")}}
    return [np.ascontiguousarray(arrays[n]) for n in names]


def jpeg_size(data) -> tuple[int, int]:
    """(height, width) from a JPEG's frame header (SOFn), without decoding; ValueError if none."""
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    if bytes(data[:2]) != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"bad JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in sof and i + 9 <= n:
            return int.from_bytes(data[i + 5: i + 7], "big"), int.from_bytes(data[i + 7: i + 9], "big")
        i += 2 + int.from_bytes(data[i + 2: i + 4], "big")
    raise ValueError("no JPEG frame header (SOF)")


class _Batch:
    """What the source fed for one iteration: its (epoch, batch), sample indices, labels and draws."""

    __slots__ = ("epoch", "batch", "indices", "labels", "draws")

    def __init__(self, epoch, batch, indices, labels, view_draws):
        self.epoch, self.batch, self.indices, self.labels, self.draws = epoch, batch, indices, labels, view_draws


class _Source:
    """``fn.external_source`` callback. Iteration i of the pipeline is batch ``position(i)`` of the
    plan: from iteration ``base[0]`` on, epoch ``base[1]`` from batch ``base[2]``, then the next
    epochs whole. Each call reads the batch's samples (``os.pread``: no shared file position) and
    computes their draws; what it fed is kept until the loader takes it with the pipeline's output.

    ``order(epoch)``: this rank's sample indices of the epoch; ``batches``: batches per epoch (a
    partial last batch when the order is not a multiple of ``batch_size``); ``policy`` None: no
    views drawn (eval)."""

    def __init__(self, shards, samples, order, *, batch_size, batches, seed=0, policy=None, res=0, views=0,
                 raster=False):
        self.shards, self.samples, self.order_of = shards, samples, order
        self.batch_size, self.batches, self.seed = batch_size, batches, seed
        self.policy, self.res, self.views, self.raster = policy, res, views, raster
        self.base = (0, 0, 0)
        self.asked = 0  # iterations fed so far
        self.fed: dict[int, _Batch] = {}
        self._orders: dict[int, np.ndarray] = {}
        self._fds: dict[int, int] = {}
        self._hw = np.full((len(samples), 2), -1, dtype=np.int64)  # image sizes, parsed on first read

    def position(self, iteration: int) -> tuple[int, int]:
        i0, e0, b0 = self.base
        p = b0 + iteration - i0
        return e0 + p // self.batches, p % self.batches

    def next_position(self, iteration: int) -> tuple[int, int]:
        """The (epoch, batch) the pipeline's output ``iteration`` holds or will hold."""
        fed = self.fed.get(iteration)
        return (fed.epoch, fed.batch) if fed else self.position(iteration)

    def replan(self, epoch: int, batch: int) -> None:
        """Iterations not yet fed deliver ``epoch`` from ``batch`` on."""
        self.base = (self.asked, epoch, batch)

    def take(self, iteration: int) -> _Batch:
        return self.fed.pop(iteration)

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:  # the prefetch spans at most two epochs
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.asarray(self.order_of(epoch), dtype=np.int64)
        return self._orders[epoch]

    def _read(self, i: int) -> np.ndarray:
        """Sample i: its JPEG bytes, or its raster (H x W x C, stored dtype) from the .npy member."""
        sample = self.samples[i]
        fd = self._fds.get(sample.shard)
        if fd is None:
            fd = self._fds[sample.shard] = os.open(self.shards[sample.shard], os.O_RDONLY)
        blob = os.pread(fd, sample.size, sample.offset)
        if len(blob) != sample.size:
            raise UserError(f"WebDataset shard {self.shards[sample.shard]} is truncated (sample {sample.key}); "
                            "re-run `fasthpt prep`")
        try:
            if self.raster:
                array = npy_array(blob)
                self._hw[i] = array.shape[:2]
                return array
            if self._hw[i, 0] < 0 and self.policy is not None:
                self._hw[i] = jpeg_size(blob)
        except ValueError as exc:
            raise UserError(f"{self.shards[sample.shard]}: sample {sample.key} cannot be read ({exc}); "
                            "re-run `fasthpt prep`") from None
        return np.frombuffer(blob, dtype=np.uint8)

    def __call__(self, info):
        it = info.iteration
        self.asked = max(self.asked, it + 1)
        epoch, b = self.position(it)
        chosen = self.order(epoch)[b * self.batch_size: (b + 1) * self.batch_size]
        blobs = [self._read(int(i)) for i in chosen]
        labels = np.array([self.samples[int(i)].label for i in chosen], dtype=np.int64)
        view_draws = None
        if self.policy is not None:
            hw = self._hw[chosen]
            view_draws = draws.view_draws(self.seed, epoch, chosen, hw[:, 0], hw[:, 1], self.policy, self.res,
                                          self.views)
        self.fed[it] = _Batch(epoch, b, chosen, labels, view_draws)
        names = _used_draws(self.policy, self.raster) if self.policy is not None else []
        return [blobs] + [a for d in (view_draws or []) for a in _draw_arrays(d, names)]

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)


def _norm_args(manifest: Manifest, channels_last: bool) -> dict:
    # NHWC out of DALI + a permute in torch gives a channels_last NCHW tensor without a copy.
    return dict(mean=manifest.mean, std=manifest.std, output_layout="HWC" if channels_last else "CHW")


_DALI_DTYPES = {"uint8": "UINT8", "uint16": "UINT16", "int16": "INT16", "float32": "FLOAT"}


def _inputs(fn, types, source, policy: AugPolicy | None, views: int, bands=None):
    """The external source's nodes: the samples (JPEG bytes, or H x W x C rasters), then each
    view's draws (dict by name)."""
    names = _used_draws(policy, bands is not None) if policy is not None else []
    first = (_DALI_DTYPES[bands.dtype], 3) if bands is not None else ("UINT8", 1)
    kinds = [first] + [_DRAW_OUTPUTS[n] for _ in range(views) for n in names]
    layouts = ["HWC" if bands is not None else ""] + [""] * (len(kinds) - 1)
    nodes = fn.external_source(source=source, num_outputs=len(kinds), batch=True, batch_info=True,
                               dtype=[getattr(types, t) for t, _ in kinds], ndim=[n for _, n in kinds],
                               layout=layouts)
    per_view = [dict(zip(names, nodes[1 + v * len(names): 1 + (v + 1) * len(names)])) for v in range(views)]
    return nodes[0], per_view


def _images(fn, types, data, gpu: bool, bands):
    """The decoded images: JPEGs decoded (nvJPEG on a GPU), rasters as fed (moved to the GPU there)."""
    if bands is not None:
        return data.gpu() if gpu else data
    return fn.decoders.image(data, device="mixed" if gpu else "cpu", output_type=types.RGB)


def _views_pipeline(manifest, source, policy, res, gpu, channels_last, views, bands=None, **kw):
    """``views`` augmented views of each sample (2: SSL; 1 under the labelled policy: crop and flip)."""
    from nvidia.dali import pipeline_def

    fn, dmath, types = _dali()

    @pipeline_def(enable_conditionals=True, **kw)
    def augmented():
        data, view_draws = _inputs(fn, types, source, policy, views, bands)
        images = _images(fn, types, data, gpu, bands)
        norm = _norm_args(manifest, channels_last)
        return tuple(_view(fn, dmath, types, images, d, policy, res, norm, bands) for d in view_draws)

    return augmented()


def _center_anchor(fn, dmath, types, images, res: int):
    """torchvision's center_crop anchor, int(round((side - res) / 2)) with Python's round-half-to-even
    (DALI's own centre crop rounds halves up: a one-pixel shift on odd margins)."""
    hw = fn.cast(images.shape()[0:2], dtype=types.FLOAT)
    margin = hw - float(res)
    half = dmath.floor(margin / 2.0)
    odd = margin - 2.0 * half
    half_is_odd = half - 2.0 * dmath.floor(half / 2.0)
    return fn.cast(half + odd * half_is_odd, dtype=types.INT32)


def _shorter_side_size(fn, dmath, types, images, resize_to: int):
    """(H', W') of torchvision's Resize(resize_to): the shorter side to resize_to, the longer to
    int(resize_to * long / short), truncated (DALI's own resize_shorter rounds it: one pixel more
    on some shapes, and a different sampling of the whole image)."""
    hw = fn.cast(images.shape()[0:2], dtype=types.FLOAT)
    short = dmath.min(hw[0], hw[1])
    is_long = fn.cast(hw > short, dtype=types.FLOAT)  # 0 for the shorter side (both, if square)
    longer = dmath.floor(float(resize_to) * hw / short)
    return is_long * longer + (1.0 - is_long) * float(resize_to)


def _eval_pipeline(manifest, source, res, gpu, channels_last, bands=None, **kw):
    from nvidia.dali import pipeline_def

    fn, dmath, types = _dali()

    @pipeline_def(**kw)
    def evaluation():
        data, _ = _inputs(fn, types, source, None, 0, bands)
        images = _images(fn, types, data, gpu, bands)
        extra = {"dtype": types.FLOAT} if bands is not None else {}
        size = _shorter_side_size(fn, dmath, types, images, common.eval_resize(res))
        images = fn.resize(images, size=size, antialias=True, **extra)
        images = fn.slice(images, start=_center_anchor(fn, dmath, types, images, res), shape=[res, res], axes=[0, 1])
        return fn.crop_mirror_normalize(images, dtype=types.FLOAT, **_norm_args(manifest, channels_last))

    return evaluation()


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = tensor_list.as_tensor()
    out = torch.empty(dense.shape(), dtype=_TORCH_DTYPES[str(dense.dtype)], device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device) if device.type == "cuda" else None)
    return out


_TORCH_DTYPES = {"DALIDataType.FLOAT": torch.float32, "DALIDataType.UINT8": torch.uint8,
                 "DALIDataType.INT64": torch.int64, "DALIDataType.BOOL": torch.bool,
                 "DALIDataType.INT32": torch.int32}



class DaliLoader:
    """One pipeline for the loader's life, fed by a _Source (module doc). Each pass is one epoch:
    ``set_epoch(e)`` chooses the next pass's epoch (without it, successive passes are successive
    epochs) and ``start_batch`` its first batch (a resume mid-epoch: the batches before it are
    neither read nor decoded)."""

    backend = BACKEND

    def __init__(self, build, source: _Source, *, num_samples, device, channels_last, kind, debug=False):
        self.build, self.source, self.num_samples = build, source, num_samples
        self.device, self.channels_last, self.kind, self.debug = device, channels_last, kind, debug
        self.epoch, self.start = 0, 0
        self.pipelines_built = 0
        self._pipe = None
        self._consumed = 0  # pipeline outputs taken (and dropped) so far

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside the epoch's {len(self)} batches")
        self.epoch, self.start = int(epoch), int(start_batch)

    def __len__(self):
        return self.source.batches

    def _position(self, epoch: int, batch: int) -> None:
        """Make the pipeline's next output batch ``batch`` of ``epoch``."""
        if self._pipe is None:
            self.source.replan(epoch, batch)
            self._pipe = self.build(self.source)
            self._pipe.build()
            self.pipelines_built += 1
            return
        if self.source.next_position(self._consumed) == (epoch, batch):
            return
        self.source.replan(epoch, batch)
        stale = self.source.asked  # outputs fed under the old plan (prefetched): run and dropped
        while self._consumed < stale:
            self._run()

    def _run(self):
        try:
            outputs = self._pipe.run()
        except RuntimeError as exc:  # e.g. a sample DALI cannot decode: one line, not DALI's traceback
            raise UserError(f"DALI pipeline failed: {str(exc).strip().splitlines()[0]}") from None
        fed = self.source.take(self._consumed)
        self._consumed += 1
        return outputs, fed

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        self._position(epoch, start)
        for _ in range(start, len(self)):
            yield self._batch(*self._run())

    def _images(self, tensor_list):
        x = _to_torch(tensor_list, self.device)
        return x.permute(0, 3, 1, 2) if self.channels_last else x

    def _batch(self, outputs, fed: _Batch):
        views = tuple(self._images(t) for t in outputs)
        labels = torch.from_numpy(fed.labels)
        if self.debug:
            draws_ = tuple({k: torch.as_tensor(np.asarray(v), dtype=common.DRAW_DTYPES[k]) for k, v in d.items()}
                           for d in fed.draws or ())
            return common.DebugBatch(views, labels.to(self.device), torch.from_numpy(fed.indices), draws_)
        return views if self.kind == "ssl" else (views[0], labels.to(self.device))


def _pipe_kwargs(batch_size, workers, device: torch.device, gpu: bool) -> dict:
    device_id = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None
    # exec_dynamic: DALI 2.4's default for these settings, stated because the eval pipeline reads a
    # GPU node's shape (images.shape()), which needs it. The pipeline draws nothing (seed unused).
    return dict(batch_size=batch_size, num_threads=max(1, workers), device_id=device_id, seed=0,
                prefetch_queue_depth=2, exec_dynamic=True)


def _indexed(manifest: Manifest, split: str) -> tuple[list[str], list]:
    shards, samples = common.wds_samples(manifest, split)
    return [str(p) for p in shards], samples


def _augmented_loader(manifest, *, split, res, batch_size, policy, views, workers, device, seed, rank, world_size,
                      drop_last, channels_last, indices, debug, kind) -> DaliLoader:
    gpu = _on_gpu(device)
    shards, samples = _indexed(manifest, split)
    bands = spectral.bands_of(manifest)
    if bands is not None:
        policy = spectral.spectral_policy(policy)
    if kind == "labelled":
        samples = common.require_labels(manifest, split, samples)
    subset = common.subset_indices(manifest, split, indices)
    per_rank = common.ssl_rank_count(len(subset), world_size)
    common.check_batch(batch_size, per_rank, drop_last, f"{split} split")
    source = _Source(shards, samples, lambda e: common.labelled_rank_indices(subset, rank, world_size, seed, e),
                     batch_size=batch_size, batches=common.num_batches(per_rank, batch_size, drop_last), seed=seed,
                     policy=policy, res=res, views=views, raster=bands is not None)
    kw = _pipe_kwargs(batch_size, workers, device, gpu)
    num = source.batches * batch_size if drop_last else per_rank
    return DaliLoader(lambda src: _views_pipeline(manifest, src, policy, res, gpu, channels_last, views, bands, **kw),
                      source, num_samples=num, device=device, channels_last=channels_last, kind=kind, debug=debug)


def build_ssl_loader(manifest: Manifest, *, split, res, batch_size, policy, workers, device, seed, rank,
                     world_size, drop_last, channels_last, indices=None, debug: bool = False) -> DaliLoader:
    """Two-view loader (over the samples ``indices`` of the split when given). ``debug``: batches
    are common.DebugBatch (two views, the labels, the sample indices, each view's draws; no jitter
    order: the colour pass has none)."""
    return _augmented_loader(manifest, split=split, res=res, batch_size=batch_size, policy=policy.validate(),
                             views=2, workers=workers, device=device, seed=seed, rank=rank, world_size=world_size,
                             drop_last=drop_last, channels_last=channels_last, indices=indices, debug=debug,
                             kind="ssl")


def build_labelled_loader(manifest: Manifest, *, split, res, batch_size, workers, device, seed, rank, world_size,
                          channels_last, indices=None, debug: bool = False) -> DaliLoader:
    """One labelled crop-and-flip view per sample, full batches, an exact permutation per epoch.
    ``debug``: batches are common.DebugBatch (one view, the labels, the sample indices, the draws)."""
    return _augmented_loader(manifest, split=split, res=res, batch_size=batch_size, policy=common.labelled_policy(),
                             views=1, workers=workers, device=device, seed=seed, rank=rank, world_size=world_size,
                             drop_last=True, channels_last=channels_last, indices=indices, debug=debug,
                             kind="labelled")


def build_eval_loader(manifest: Manifest, *, split, res, batch_size, workers, device, rank, world_size,
                      channels_last) -> DaliLoader:
    gpu = _on_gpu(device)
    shards, samples = _indexed(manifest, split)
    bands = spectral.bands_of(manifest)
    mine = common.eval_rank_indices(len(samples), rank, world_size).numpy()
    common.check_batch(batch_size, len(mine), False, f"{split} split")
    source = _Source(shards, samples, lambda e: mine, batch_size=batch_size,
                     batches=common.num_batches(len(mine), batch_size, False), raster=bands is not None)
    kw = _pipe_kwargs(batch_size, workers, device, gpu)
    return DaliLoader(lambda src: _eval_pipeline(manifest, src, res, gpu, channels_last, bands, **kw), source,
                      num_samples=len(mine), device=device, channels_last=channels_last, kind="eval")


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
