"""FFCV operations for augmented loading: ONE JPEG decode per image, V augmented views (V = 2 for
SSL, 1 for the labelled train view of the linear probe and fine-tuning).

Upstream FFCV 1.0.2 has no multi-view pipelines and no blur / grayscale / hue operations, so:
- ``ViewsCropDecoder`` (the 'image' field's decoder) draws the V crops, decodes each JPEG once
  with libffcv's ``imdecode`` (at 1/2, 1/4 or 1/8 scale in the DCT domain when every crop stays
  at least res wide after it) and writes V random-resized crops into a (V, res, res, 3) uint8
  slot per sample, resized with torchvision's antialiased bilinear filter (ffcv_kernels.
  resize_crop_aa: equal to torchvision to rounding; OpenCV's INTER_AREA in libffcv's resize_crop
  is up to 44 levels off when upscaling and not faster on average at 224 px);
- ``ViewsAugment`` applies, per view, colour jitter / grayscale / blur / flip / normalisation in
  a few fused passes (ffcv_kernels.augment_view), parallel over the batch with FFCV's iterator.
Both are compiled the way FFCV compiles its own operations (``Compiler.compile`` with numba,
``Compiler.get_iterator`` -> prange). Random draws are counter-based (see ffcv_kernels) keyed by
``EpochKey``, which the loader sets per epoch and the compiled code reads once per batch.

Output of ViewsAugment: the batch slot (count x V x ...) is written as if it were
V x count x ...: view v of sample i at [v, i], so that each view of the batch is one contiguous
block (a valid channels_last or contiguous NCHW tensor with no copy); see ``split_views``.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

from fasthpt.data import ffcv_compat as compat  # first: refuses an FFCV version it was not read from

# isort: split
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation

from fasthpt.data import ffcv_kernels as K
from fasthpt.data.policy import AugPolicy


class EpochKey:
    """The random key of the current epoch, shared by the decoder and the augmentation."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.value = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.value = int(K.epoch_key(self.seed, int(epoch)))

    def get(self) -> int:
        return self.value


_imdecode = compat.imdecode  # libffcv's C entry point (ctypes: callable from numba)


def _decode_jpeg(data, dst, height, width, denominator):
    """libffcv's imdecode of a whole JPEG at scale 1/denominator into the first bytes of dst."""
    return _imdecode(data.ctypes.data, data.size, height, width, dst.ctypes.data, height, width, 0, 0, 1,
                     denominator, False, False)


decode_jpeg = numba.njit(nogil=True)(_decode_jpeg)  # for callers outside the pipelines (tests)


_memcpy = compat.memcopy  # libffcv's memcpy(src, dst, size)


@intrinsic
def _voidptr(typingctx, address):
    """An integer address as a void pointer (for numba.carray)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return types.voidptr(types.uintp), codegen


@numba.njit(inline="always")
def writable(a):
    """``a`` (C-contiguous) retyped as a plain writable C array, so that every FFCV buffer reaches the
    shared kernels with one array type whatever flags FFCV's allocation carries (fewer signatures
    per kernel; see the numba note in ffcv_kernels)."""
    return numba.carray(_voidptr(a.ctypes.data), a.shape, a.dtype)


def _image(address, size, buf, is_jpg, height, width, denominator):
    """The image whose bytes (JPEG, or raw RGB) are at ``address``, as a (H/d) x (W/d) x 3 view of
    buf. The source goes by address (FFCV's file views are read-only arrays). Compiled per
    pipeline, as FFCV compiles its libffcv calls: one module-level dispatcher calling these ctypes
    functions, shared by several pipelines, failed the second pipeline's compile with a KeyError
    in its overload table (numba 0.68; see the numba note in ffcv_kernels)."""
    if is_jpg:
        _imdecode(address, size, height, width, buf.ctypes.data, height, width, 0, 0, 1, denominator, False, False)
        hs, ws = (height + denominator - 1) // denominator, (width + denominator - 1) // denominator
    else:
        hs, ws = height, width
        _memcpy(address, buf.ctypes.data, 3 * hs * ws)
    return buf[: 3 * hs * ws].reshape(hs, ws, 3)


class _Memo:
    """generate_code once per operation: FFCV calls it again at every epoch (Graph.allocate_memory),
    and each call would leave new numba dispatchers to be collected (see _decode_jpeg)."""

    def __init__(self, make):
        self.make = make

    def __get__(self, op, owner=None):
        def generate_code():
            if "_code" not in op.__dict__:
                op._code = self.make(op)
            return op._code

        return generate_code


_KEY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_uint64)


def _key_reader(key: EpochKey):
    """A C callback (numba calls ctypes function pointers natively) returning the current epoch key:
    read once per batch. An object-mode block would do the same but leaves lifted dispatchers whose
    collection by the GC breaks numba 0.68's later compiles (KeyError in a dispatcher's overloads)."""
    if not hasattr(key, "_callback"):
        key._callback = _KEY_CALLBACK(key.get)  # kept alive by the key, which the operations hold
    return key._callback


# The policy's fields in the slots of K.sample_view_params' ``cfg`` (the sigma range, per view side, aside).
_CFG_FIELDS = ((K.C_JITTER_P, "jitter_p"), (K.C_BRIGHTNESS, "brightness"), (K.C_CONTRAST, "contrast"),
               (K.C_SATURATION, "saturation"), (K.C_HUE, "hue"), (K.C_GRAY_P, "gray_p"), (K.C_BLUR_P, "blur_p"),
               (K.C_FLIP_P, "flip_p"))


def policy_vector(policy: AugPolicy, res: int) -> tuple[np.ndarray, int]:
    """(cfg for K.sample_view_params, the blur radius cap: from AugPolicy.blur_kernel_cap)."""
    cfg = np.zeros(K.CFG_LEN, np.float64)
    for slot, name in _CFG_FIELDS:
        cfg[slot] = getattr(policy, name)
    cfg[K.C_SIGMA_LO], cfg[K.C_SIGMA_HI] = policy.sigma_range(res)
    return cfg, (policy.blur_kernel_cap(res) - 1) // 2


class _ImageDecoder(Operation):
    """What both decoders declare: an ``out_shape`` uint8 output per sample, and one buffer as large
    as the largest stored image for its decode (sizes from the .beton's metadata)."""

    out_shape: tuple

    def declare_state_and_memory(self, previous_state):
        metadata, _ = compat.decoder_inputs(self)
        self.max_w = int(metadata["width"].max())
        self.max_h = int(metadata["height"].max())
        u8 = np.dtype("<u1")
        return (replace(previous_state, jit_mode=True, shape=self.out_shape, dtype=u8),
                (AllocationQuery(self.out_shape, u8), AllocationQuery((self.max_h * self.max_w * 3,), u8)))

    def code_parts(self):
        """What both decoders' compiled code closes over: FFCV's reader, its parallel iterator, the
        image fetch compiled for this pipeline (see _image), the JPEG mode code, the scratch size."""
        _, memory_read = compat.decoder_inputs(self)
        return memory_read, Compiler.get_iterator(), Compiler.compile(_image), compat.JPG_MODE, self.scratch_len()

    def scratch_len(self) -> int:
        """float32 scratch for the separable resize (see ffcv_kernels.resize_crop_aa)."""
        return int(max(self.res, self.max_h) * max(self.res, self.max_w) * 3 + self.res * 3)


class ViewsCropDecoder(_ImageDecoder):
    """RGBImageField decoder: one decode, ``views`` RandomResizedCrop views -> (views, res, res, 3) uint8.
    View v of sample i is drawn from view_key(epoch key, i, v), whatever the number of views."""

    def __init__(self, res: int, policy: AugPolicy, key: EpochKey, views: int = 2):
        super().__init__()
        self.res, self.views = int(res), int(views)
        self.scale = tuple(float(v) for v in policy.crop_scale)
        self.log_ratio = tuple(float(np.log(v)) for v in policy.crop_ratio)
        self.key = key

    out_shape = property(lambda self: (self.views, self.res, self.res, 3))

    @_Memo
    def generate_code(self):
        mem_read, my_range, get_image, jpg, scratch_len = self.code_parts()
        resize = K.resize_crop_aa
        read_key = _key_reader(self.key)
        s_lo, s_hi = self.scale
        r_lo, r_hi = self.log_ratio
        res, views = self.res, self.views
        sample_crop, view_key = K.sample_crop, K.view_key
        denominator, scale_box = K.decode_denominator, K.scale_box

        def decode(batch_indices, my_storage, metadata, storage_state):
            dst, tmp = writable(my_storage[0]), writable(my_storage[1])
            ekey = read_key()
            scratch = np.empty((numba.get_num_threads(), scratch_len), np.float32)
            boxes = np.empty((len(batch_indices), views, 4), np.int64)
            one = np.int64(1)  # not a literal: see ffcv_kernels._I0
            for k in my_range(len(batch_indices)):
                rows = scratch[numba.get_thread_id()]
                idx = batch_indices[k]
                field = metadata[idx]
                data = mem_read(field["data_ptr"], storage_state)
                h = int(field["height"])
                w = int(field["width"])
                smallest = np.int64(max(h, w))
                for v in range(views):
                    t, l, hv, wv = sample_crop(view_key(ekey, idx, np.int64(v)), h, w, s_lo, s_hi, r_lo, r_hi)
                    boxes[k, v, 0], boxes[k, v, 1], boxes[k, v, 2], boxes[k, v, 3] = t, l, hv, wv
                    smallest = min(smallest, hv, wv)
                is_jpg = field["mode"] == jpg
                d = denominator(smallest, np.int64(res)) if is_jpg else one
                img = get_image(data.ctypes.data, data.size, tmp[k], is_jpg, h, w, d)
                hs, ws = img.shape[0], img.shape[1]  # libjpeg-turbo's TJSCALED sizes
                for v in range(views):
                    t, l, hv, wv = scale_box(boxes[k, v, 0], boxes[k, v, 1], boxes[k, v, 2], boxes[k, v, 3], d, hs, ws)
                    resize(img, t, l, hv, wv, dst[k, v], rows)
            return my_storage[0][: len(batch_indices)]

        decode.is_parallel = True
        return decode


class CenterCropDecoder(_ImageDecoder):
    """RGBImageField decoder for evaluation: torchvision's Resize(resize_to) + CenterCrop(res) with
    the antialiased filter (ffcv_kernels.center_crop_aa) -> (res, res, 3) uint8."""

    def __init__(self, res: int, resize_to: int):
        super().__init__()
        self.res, self.resize_to = int(res), int(resize_to)

    out_shape = property(lambda self: (self.res, self.res, 3))

    @_Memo
    def generate_code(self):
        mem_read, my_range, get_image, jpg, scratch_len = self.code_parts()
        crop = K.center_crop_aa
        resize_to = self.resize_to

        def decode(batch_indices, my_storage, metadata, storage_state):
            dst, tmp = writable(my_storage[0]), writable(my_storage[1])
            scratch = np.empty((numba.get_num_threads(), scratch_len), np.float32)
            for k in my_range(len(batch_indices)):
                field = metadata[batch_indices[k]]
                data = mem_read(field["data_ptr"], storage_state)
                h, w = int(field["height"]), int(field["width"])
                img = get_image(data.ctypes.data, data.size, tmp[k], field["mode"] == jpg, h, w, np.int64(1))
                crop(img, np.int64(resize_to), dst[k], scratch[numba.get_thread_id()])
            return my_storage[0][: len(batch_indices)]

        decode.is_parallel = True
        return decode


class ViewsAugment(Operation):
    """Per view: jitter (p) -> grayscale (p) -> blur (p) -> flip (p) -> normalise, fused.

    layout K.OUT_HWC / K.OUT_CHW: float32 normalised with ``mean``/``std`` (0..255 units);
    K.OUT_U8: uint8 H x W x 3, left for the device to normalise (4x fewer bytes to transfer).
    """

    def __init__(self, res: int, policy: AugPolicy, key: EpochKey, mean, std, layout: int, views: int = 2):
        super().__init__()
        self.res, self.views = int(res), int(views)
        self.cfg, self.blur_cap = policy_vector(policy, res)
        self.key = key
        std = np.asarray(std, np.float32)
        self.scale = (1.0 / std).astype(np.float32)
        self.shift = (-np.asarray(mean, np.float32) / std).astype(np.float32)
        self.layout = int(layout)

    def _view_shape(self):
        r = self.res
        return (3, r, r) if self.layout == K.OUT_CHW else (r, r, 3)

    def declare_state_and_memory(self, previous_state):
        assert previous_state.shape == (self.views, self.res, self.res, 3), previous_state.shape
        dtype = np.dtype("<u1") if self.layout == K.OUT_U8 else np.dtype("<f4")
        shape = (self.views,) + self._view_shape()
        return replace(previous_state, jit_mode=True, shape=shape, dtype=dtype), AllocationQuery(shape, dtype)

    @_Memo
    def generate_code(self):
        my_range = Compiler.get_iterator()
        read_key = _key_reader(self.key)
        res, cfg, cap, layout, views = self.res, self.cfg, self.blur_cap, self.layout, self.views
        scale, shift = self.scale, self.shift
        v0, v1, v2 = self._view_shape()
        view_key, sample_params, augment_view = K.view_key, K.sample_view_params, K.augment_view

        def augment(images_in, dst_in, indices):
            images, dst = writable(images_in), writable(dst_in)
            n = images.shape[0]
            ekey = read_key()
            out = dst.reshape((views, n, v0, v1, v2))  # view-major: see the module docstring
            nt = numba.get_num_threads()
            work = np.empty((nt, 2, 3, res, res), np.float32)
            rows = np.empty((nt, res), np.float32)
            params = np.empty((nt, K.PARAMS_LEN), np.float64)
            for k in my_range(n):
                t = numba.get_thread_id()
                for v in range(views):
                    sample_params(view_key(ekey, indices[k], v), cfg, params[t])
                    augment_view(images[k, v], out[v, k], params[t], np.int64(cap), work[t, 0], work[t, 1], rows[t],
                                 scale, shift, np.int64(layout))
            return dst_in

        augment.is_parallel = True
        return compat.with_indices(augment)


def split_views(batch: np.ndarray, res: int, layout: int, channels: int = 3):
    """The (count, V, ...) slot written view-major -> a tuple of V numpy arrays, no copy:
    N x C x res x res for OUT_CHW, N x res x res x C otherwise."""
    n, count = batch.shape[0], batch.shape[1]
    shape = (channels, res, res) if layout == K.OUT_CHW else (res, res, channels)
    views = batch.reshape((count, n) + shape)
    return tuple(views[v] for v in range(count))
