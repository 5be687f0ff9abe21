"""Numba kernels of the `ffcv` backend for rasters (H x W x C, any band count, stored dtype): the
crop-resize, jitter, blur, flip and standardisation of fasthpt.data.spectral, in float32.

The filters are the RGB kernels' (ffcv_kernels: the antialiased bilinear weights, torchvision's
Gaussian and its reflected borders); only the channel count is free and nothing rounds or clamps
to 0..255. Views are interleaved H x W x C float32 scratch; a C-band row stays contiguous.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from fasthpt.data import ffcv_kernels as K

_JIT = dict(nogil=True, fastmath=True, error_model="numpy")
_F0 = np.float32(0.0)


@njit(**_JIT)
def resize_bands(src, top, left, h, w, wy_, wx_, out, tmp):
    """out (R x S x C float32) = the region src[top:top+h, left:left+w] (H x W x C, any numeric
    dtype) resized with per-axis weights (ffcv_kernels.aa_weights over the region): horizontal taps
    on each region row into tmp (float32, >= h * S * C), then the vertical taps."""
    R, S, C = out.shape[0], out.shape[1], out.shape[2]
    fy, cy, wy = wy_
    fx, cx, wx = wx_
    t = tmp[: h * S * C].reshape(h, S, C)
    for y in range(h):
        row = src[top + y]
        ty = t[y]
        for x in range(S):
            base = left + fx[x]
            for c in range(C):
                ty[x, c] = _F0
            for k in range(cx[x]):
                wk = wx[x, k]
                px = row[base + k]
                for c in range(C):
                    ty[x, c] += wk * np.float32(px[c])
    for i in range(R):
        o = out[i]
        first = t[fy[i]]
        w0 = wy[i, 0]
        for x in range(S):
            for c in range(C):
                o[x, c] = w0 * first[x, c]
        for k in range(1, cy[i]):
            r = t[fy[i] + k]
            wk = wy[i, k]
            for x in range(S):
                for c in range(C):
                    o[x, c] += wk * r[x, c]


@njit(**_JIT)
def crop_bands(src, top, left, h, w, out, tmp):
    """torchvision's resized_crop (antialiased bilinear) of every band."""
    R, S = out.shape[0], out.shape[1]
    resize_bands(src, top, left, h, w, K.aa_weights(h, R, 0.0, 0.0), K.aa_weights(w, S, 0.0, 0.0), out, tmp)


@njit(**_JIT)
def center_crop_bands(src, resize_to, out, tmp):
    """torchvision's Resize(resize_to) (shorter side, antialiased) then CenterCrop to out's size."""
    H, W = src.shape[0], src.shape[1]
    R, S = out.shape[0], out.shape[1]
    short, long = min(H, W), max(H, W)
    new_long = int(resize_to * long / short)
    new_h, new_w = (new_long, resize_to) if W <= H else (resize_to, new_long)
    top = int(round((new_h - R) / 2.0))
    left = int(round((new_w - S) / 2.0))
    sy, sx = H / new_h, W / new_w
    resize_bands(src, 0, 0, H, W, K.aa_weights(H, R, top * sy, sy), K.aa_weights(W, S, left * sx, sx), out, tmp)


@njit(**_JIT)
def jitter_bands(v, b, c, lo, hi):
    """In place: b (c x + (1 - c) mean_band(x)), clamped to [lo_c, hi_c] (fasthpt.data.spectral)."""
    R, S, C = v.shape[0], v.shape[1], v.shape[2]
    means = np.zeros(C, np.float64)
    for y in range(R):
        for x in range(S):
            for ch in range(C):
                means[ch] += v[y, x, ch]
    scale = np.float32(b * c)
    shift = np.empty(C, np.float32)
    for ch in range(C):
        shift[ch] = np.float32(b * (1.0 - c) * means[ch] / (R * S))
    for y in range(R):
        for x in range(S):
            for ch in range(C):
                v[y, x, ch] = min(max(scale * v[y, x, ch] + shift[ch], lo[ch]), hi[ch])


@njit(**_JIT)
def blur_bands(v, sigma, radius, tmp):
    """In place: the separable Gaussian of every band, reflected borders (torchvision's)."""
    R, S, C = v.shape[0], v.shape[1], v.shape[2]
    w = K.gaussian_weights(sigma, radius)
    r = radius
    t = tmp[: R * S * C].reshape(R, S, C)
    for y in range(R):
        for x in range(S):
            for ch in range(C):
                t[y, x, ch] = _F0
            for k in range(-r, r + 1):
                xs = K._reflect(x + k, S)
                wk = w[k + r]
                for ch in range(C):
                    t[y, x, ch] += wk * v[y, xs, ch]
    for y in range(R):
        for x in range(S):
            for ch in range(C):
                v[y, x, ch] = _F0
        for k in range(-r, r + 1):
            ys = K._reflect(y + k, R)
            wk = w[k + r]
            for x in range(S):
                for ch in range(C):
                    v[y, x, ch] += wk * t[ys, x, ch]


@njit(**_JIT)
def emit_bands(v, out, flip, scale, shift, layout):
    """out = v flipped (if drawn) and standardised per band: H x W x C (K.OUT_HWC) or C x H x W."""
    R, S, C = v.shape[0], v.shape[1], v.shape[2]
    for y in range(R):
        for x in range(S):
            xs = S - 1 - x if flip else x
            for ch in range(C):
                value = v[y, xs, ch] * scale[ch] + shift[ch]
                if layout == K.OUT_CHW:
                    out[ch, y, x] = value
                else:
                    out[y, x, ch] = value


@njit(**_JIT)
def augment_bands(v, out, p, blur_cap, lo, hi, scale, shift, layout, tmp):
    """One raster view (v: the crop, R x S x C float32, changed in place) -> out, with the drawn
    parameters p (ffcv_kernels.sample_view_params): jitter (brightness, contrast), blur, flip,
    standardisation. blur_cap: the kernel radius cap (AugPolicy.blur_kernel_cap)."""
    if p[K.P_JIT] > 0.5:
        jitter_bands(v, p[K.P_FACT], p[K.P_FACT + 1], lo, hi)
    if p[K.P_BLUR] > 0.5:
        sigma = p[K.P_SIGMA]
        radius = min(int(math.ceil(3.0 * sigma)), blur_cap)
        blur_bands(v, sigma, radius, tmp)
    emit_bands(v, out, p[K.P_FLIP] > 0.5, scale, shift, layout)
