"""FFCV operations for rasters (the 'image' BytesField of fasthpt.raster_format records): each
decodes a record (a copy into an aligned buffer; the values are read in their stored dtype) and
writes finished float32 views, standardised per band, in the loader's layout.

- ``RasterViewsDecoder``: V random-resized crops per sample, each jittered, blurred, flipped and
  standardised (fasthpt.data.spectral; raster_kernels), view-major like ffcv_ops.ViewsAugment (view
  v of sample i at [v, i]: each view of the batch is one contiguous block).
- ``RasterCenterCropDecoder``: the evaluation view (resize the shorter side, centre crop),
  standardised.
The draws are ffcv_ops' (view_key, sample_crop, sample_view_params): a raster sample draws what an
RGB sample with the same key would.
"""

from __future__ import annotations

from dataclasses import replace

import numba
import numpy as np

from fasthpt.data import ffcv_compat as compat  # first: refuses an FFCV version it was not read from

# isort: split
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation

from fasthpt.data import ffcv_kernels as K
from fasthpt.data import raster_kernels as RK
from fasthpt.data.ffcv_ops import EpochKey, _key_reader, _Memo, policy_vector, writable
from fasthpt.data.policy import AugPolicy
from fasthpt.data.spectral import Bands
from fasthpt.raster_format import HEADER_BYTES, stored_dtype

_memcpy = compat.memcopy


def _record(address, size, buf):
    """The record at ``address`` copied into ``buf`` (aligned: the values can be viewed in their
    dtype). Compiled per pipeline, like ffcv_ops._image (see the numba note in ffcv_kernels)."""
    _memcpy(address, buf.ctypes.data, size)
    return buf[:size]


class _RasterDecoder(Operation):
    """What both raster decoders share: the record buffer, the dtype, the standardisation."""

    def __init__(self, res: int, bands: Bands, layout: int):
        super().__init__()
        self.res, self.bands, self.layout = int(res), bands, int(layout)
        self.dtype = stored_dtype(bands.dtype)
        std = np.asarray(bands.std, np.float32)
        self.scale = (1.0 / std).astype(np.float32)
        self.shift = (-np.asarray(bands.mean, np.float32) / std).astype(np.float32)

    def _view_shape(self):
        r, c = self.res, self.bands.bands
        return (c, r, r) if self.layout == K.OUT_CHW else (r, r, c)

    def _memory(self, previous_state, shape):
        metadata, _ = compat.decoder_inputs(self)
        self.max_size = int(metadata["size"].max())
        row = -(-self.max_size // 16) * 16  # whole 16-byte rows: every record starts aligned
        f4 = np.dtype("<f4")
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=f4),
                (AllocationQuery(shape, f4), AllocationQuery((row,), np.dtype("<u1"))))

    def _image_reader(self):
        """Compiled ``read(index, metadata, storage_state, buf)``: sample ``index``'s record copied
        into ``buf`` and viewed as its H x W x C image in the stored dtype (both decoders' loops)."""
        _, mem_read = compat.decoder_inputs(self)
        record = Compiler.compile(_record)
        vtype, size, nb = self.dtype.type, self.dtype.itemsize, self.bands.bands

        def read(index, metadata, storage_state, buf):
            field = metadata[index]
            data = mem_read(field["ptr"], storage_state)
            rec = record(data.ctypes.data, np.int64(field["size"]), buf)
            head = rec[:HEADER_BYTES].view(np.uint32)
            h, w = np.int64(head[0]), np.int64(head[1])
            return rec[HEADER_BYTES:HEADER_BYTES + h * w * nb * size].view(vtype).reshape(h, w, nb)

        return Compiler.compile(read)

    def scratch_len(self, src_hw: int) -> int:
        return int(max(self.res, src_hw) * max(self.res, src_hw) * self.bands.bands)


class RasterViewsDecoder(_RasterDecoder):
    """``views`` augmented views per sample -> float32 (views, view shape), view-major."""

    def __init__(self, res: int, policy: AugPolicy, key: EpochKey, bands: Bands, layout: int, views: int = 2):
        super().__init__(res, bands, layout)
        self.views, self.key = int(views), key
        self.crop_scale = tuple(float(v) for v in policy.crop_scale)
        self.log_ratio = tuple(float(np.log(v)) for v in policy.crop_ratio)
        self.cfg, self.blur_cap = policy_vector(policy, res)

    def declare_state_and_memory(self, previous_state):
        return self._memory(previous_state, (self.views,) + self._view_shape())

    @_Memo
    def generate_code(self):
        my_range, read = Compiler.get_iterator(), self._image_reader()
        read_key = _key_reader(self.key)
        res, views, layout, cap, cfg = self.res, self.views, self.layout, self.blur_cap, self.cfg
        s_lo, s_hi = self.crop_scale
        r_lo, r_hi = self.log_ratio
        nb = self.bands.bands
        lo, hi, scale, shift = self.bands.lo, self.bands.hi, self.scale, self.shift
        v0, v1, v2 = self._view_shape()
        sample_crop, view_key, sample_params = K.sample_crop, K.view_key, K.sample_view_params
        crop, augment = RK.crop_bands, RK.augment_bands

        def decode(batch_indices, my_storage, metadata, storage_state):
            dst, buf = writable(my_storage[0]), writable(my_storage[1])
            n = len(batch_indices)
            out = dst.reshape((views, n, v0, v1, v2))  # view-major
            ekey = read_key()
            nt = numba.get_num_threads()
            work = np.empty((nt, res, res, nb), np.float32)
            params = np.empty((nt, K.PARAMS_LEN), np.float64)
            for k in my_range(n):
                t = numba.get_thread_id()
                idx = batch_indices[k]
                img = read(idx, metadata, storage_state, buf[k])
                h, w = np.int64(img.shape[0]), np.int64(img.shape[1])
                tmp = np.empty(max(res, h) * max(res, w) * nb, np.float32)
                for v in range(views):
                    key = view_key(ekey, idx, np.int64(v))
                    top, left, hv, wv = sample_crop(key, h, w, s_lo, s_hi, r_lo, r_hi)
                    crop(img, top, left, hv, wv, work[t], tmp)
                    sample_params(key, cfg, params[t])
                    augment(work[t], out[v, k], params[t], np.int64(cap), lo, hi, scale, shift, np.int64(layout), tmp)
            return my_storage[0][:n]

        decode.is_parallel = True
        return decode


class RasterCenterCropDecoder(_RasterDecoder):
    """The evaluation view: Resize(resize_to) + CenterCrop(res), standardised -> float32 view shape."""

    def __init__(self, res: int, resize_to: int, bands: Bands, layout: int):
        super().__init__(res, bands, layout)
        self.resize_to = int(resize_to)

    def declare_state_and_memory(self, previous_state):
        return self._memory(previous_state, self._view_shape())

    @_Memo
    def generate_code(self):
        my_range, read = Compiler.get_iterator(), self._image_reader()
        res, layout, resize_to = self.res, self.layout, self.resize_to
        nb = self.bands.bands
        scale, shift = self.scale, self.shift
        center, emit = RK.center_crop_bands, RK.emit_bands

        def decode(batch_indices, my_storage, metadata, storage_state):
            dst, buf = writable(my_storage[0]), writable(my_storage[1])
            n = len(batch_indices)
            work = np.empty((numba.get_num_threads(), res, res, nb), np.float32)
            for k in my_range(n):
                t = numba.get_thread_id()
                img = read(batch_indices[k], metadata, storage_state, buf[k])
                h, w = np.int64(img.shape[0]), np.int64(img.shape[1])
                tmp = np.empty(max(res, h) * max(res, w) * nb, np.float32)
                center(img, np.int64(resize_to), work[t], tmp)
                emit(work[t], dst[k], False, scale, shift, np.int64(layout))
            return my_storage[0][:n]

        decode.is_parallel = True
        return decode
