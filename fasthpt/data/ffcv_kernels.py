"""Numba kernels of the `ffcv` backend: the random draws and the per-view augmentation, as plain
functions (tested directly against torchvision), called from the FFCV operations in ffcv_ops.py.

Randomness is counter-based: every number is a pure function of (seed, epoch, sample index, view,
draw number) through the splitmix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014). A run therefore repeats exactly whatever the thread count, the
batch composition or the rank a sample lands on; no per-thread generator state exists.

Pixel values stay in 0..255 float32 units; the operations follow torchvision's tensor semantics
(``torchvision.transforms.functional`` on float images: every jitter clamps to the valid range, no
intermediate rounding).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = dict(nogil=True, fastmath=True, error_model="numpy", cache=True)

_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 constants (Steele et al. 2014)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: the splitmix64 increment
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2^-53: top 53 bits -> a double in [0, 1)

# Draw numbers: the crop uses 4 per attempt (10 attempts, as torchvision); the view's other
# parameters start at _AUG so the two never overlap.
_CROP_TRIES = 10
_AUG = 64

# torchvision's rgb_to_grayscale weights for tensors (ITU-R 601-2 luma).
_WR, _WG, _WB = 0.2989, 0.587, 0.114

# Layout of the policy vector `cfg` handed to sample_view_params (built by ffcv_ops.policy_vector).
CFG_LEN = 12
# Layout of one view's drawn parameters (sample_view_params output).
P_FACT = 0  # 4 factors: brightness, contrast, saturation, hue (neutral 1, 1, 1, 0 when off)
P_ORDER = 4  # 4 slots: jitter op order (0 brightness, 1 contrast, 2 saturation, 3 hue)
P_GRAY, P_SIGMA, P_FLIP, P_JIT, P_BLUR = 8, 9, 10, 11, 12  # sigma is drawn even when blur is 0
PARAMS_LEN = 13
# Output layouts of a view: normalised float32 H x W x 3 (channels_last), float32 3 x H x W, raw uint8 H x W x 3.
OUT_HWC, OUT_CHW, OUT_U8 = 0, 1, 2


@njit(**_JIT)
def mix64(z):
    z = np.uint64(z)
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(**_JIT)
def uniform(key, n):
    """The n-th uniform double in [0, 1) of the stream ``key``."""
    # Every operand is cast to uint64: numba turns mixed int64/uint64 arithmetic into float64.
    return float(mix64(np.uint64(key) + np.uint64(n) * _GOLD) >> _S11) * _INV53


@njit(**_JIT)
def epoch_key(seed, epoch):
    return mix64(mix64(np.uint64(seed) * _GOLD) + np.uint64(epoch) + np.uint64(1))


@njit(**_JIT)
def view_key(ekey, sample, view):
    return mix64(np.uint64(ekey) ^ mix64(np.uint64(sample) * np.uint64(2) + np.uint64(view) + np.uint64(1)))


@njit(**_JIT)
def sample_crop(key, height, width, scale_lo, scale_hi, logr_lo, logr_hi):
    """(top, left, h, w): torchvision's RandomResizedCrop.get_params, drawn from ``key``."""
    area = height * width
    for t in range(_CROP_TRIES):
        target = area * (scale_lo + (scale_hi - scale_lo) * uniform(key, 4 * t))
        aspect = math.exp(logr_lo + (logr_hi - logr_lo) * uniform(key, 4 * t + 1))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(uniform(key, 4 * t + 2) * (height - h + 1))
            left = int(uniform(key, 4 * t + 3) * (width - w + 1))
            return top, left, h, w
    # Fallback: the largest central crop with the ratio clamped into range (torchvision).
    in_ratio = width / height
    if in_ratio < math.exp(logr_lo):
        w = width
        h = int(round(w / math.exp(logr_lo)))
    elif in_ratio > math.exp(logr_hi):
        h = height
        w = int(round(h * math.exp(logr_hi)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@njit(**_JIT)
def sample_view_params(key, cfg, out):
    """Draw one view's jitter / gray / blur / flip parameters into ``out`` (PARAMS_LEN floats).

    cfg: jitter_p, brightness, contrast, saturation, hue, gray_p, blur_p, sigma_lo, sigma_hi, flip_p.
    Jitter factors: brightness/contrast/saturation ~ U[max(0, 1-s), 1+s], hue ~ U[-h, h], applied in a
    uniformly random order (torchvision ColorJitter.get_params). Factors and sigma are drawn whether
    or not their op is applied (P_JIT / P_BLUR say that), so their statistics can be checked.
    """
    out[P_JIT] = 1.0 if uniform(key, _AUG) < cfg[0] else 0.0
    for k in range(3):
        s = cfg[1 + k]
        lo = max(0.0, 1.0 - s)
        out[P_FACT + k] = lo + (1.0 + s - lo) * uniform(key, _AUG + 1 + k) if s > 0 else 1.0
    h = cfg[4]
    out[P_FACT + 3] = -h + 2.0 * h * uniform(key, _AUG + 4) if h > 0 else 0.0
    for k in range(4):  # Fisher-Yates shuffle of (0, 1, 2, 3)
        out[P_ORDER + k] = k
    for k in range(3, 0, -1):
        j = int(uniform(key, _AUG + 5 + k) * (k + 1))
        tmp = out[P_ORDER + k]
        out[P_ORDER + k] = out[P_ORDER + j]
        out[P_ORDER + j] = tmp
    out[P_GRAY] = 1.0 if uniform(key, _AUG + 9) < cfg[5] else 0.0
    out[P_BLUR] = 1.0 if uniform(key, _AUG + 10) < cfg[6] else 0.0
    out[P_SIGMA] = cfg[7] + (cfg[8] - cfg[7]) * uniform(key, _AUG + 11)
    out[P_FLIP] = 1.0 if uniform(key, _AUG + 12) < cfg[9] else 0.0


@njit(inline="always", **_JIT)
def _clamp(v):
    return min(max(v, 0.0), 255.0)


@njit(inline="always", **_JIT)
def _hue(r, g, b, shift):
    """torchvision's _rgb2hsv -> h + shift (mod 1) -> _hsv2rgb, simplified: v*(1-s) = min,
    v*(1-s*f) = max - range*f, v*(1-s*(1-f)) = min + range*f."""
    mx = max(r, g, b)
    mn = min(r, g, b)
    rng = mx - mn
    if rng <= 0.0:
        return r, g, b  # gray pixel: saturation 0, hue has no effect
    if mx == r:
        h6 = (g - b) / rng
    elif mx == g:
        h6 = 2.0 + (b - r) / rng
    else:
        h6 = 4.0 + (r - g) / rng
    h6 = h6 + 6.0 * shift
    h6 = h6 - 6.0 * math.floor(h6 / 6.0)
    i = int(h6)
    f = h6 - i
    if i >= 6:
        i = 0
    q = mx - rng * f
    t = mn + rng * f
    if i == 0:
        return mx, t, mn
    if i == 1:
        return q, mx, mn
    if i == 2:
        return mn, mx, t
    if i == 3:
        return mn, q, mx
    if i == 4:
        return t, mn, mx
    return mx, mn, q


@njit(inline="always", **_JIT)
def _jitter_op(op, f, r, g, b, mean):
    if op == 0:  # brightness: blend with black
        return _clamp(f * r), _clamp(f * g), _clamp(f * b)
    if op == 1:  # contrast: blend with the mean gray level of the image
        m = (1.0 - f) * mean
        return _clamp(f * r + m), _clamp(f * g + m), _clamp(f * b + m)
    if op == 2:  # saturation: blend with the pixel's gray level
        m = (1.0 - f) * (_WR * r + _WG * g + _WB * b)
        return _clamp(f * r + m), _clamp(f * g + m), _clamp(f * b + m)
    return _hue(r, g, b, f)


@njit(**_JIT)
def _active(p, op):
    f = p[P_FACT + op]
    return p[P_JIT] > 0 and (f != 0.0 if op == 3 else f != 1.0)


@njit(**_JIT)
def color_pass1(src, dst, p):
    """dst = the jitter ops that precede contrast (uint8 or float src -> float32 dst).
    Returns the mean gray level of dst, which contrast needs (0 when contrast is not applied)."""
    ops = np.empty(4, np.int64)
    n = 0
    for k in range(4):
        op = int(p[P_ORDER + k])
        if op == 1:
            break
        if _active(p, op):
            ops[n] = op
            n += 1
    need_mean = _active(p, 1)
    H, W = src.shape[0], src.shape[1]
    acc = 0.0
    for y in range(H):
        row_acc = 0.0
        for x in range(W):
            r, g, b = float(src[y, x, 0]), float(src[y, x, 1]), float(src[y, x, 2])
            for k in range(n):
                r, g, b = _jitter_op(ops[k], p[P_FACT + ops[k]], r, g, b, 0.0)
            dst[y, x, 0], dst[y, x, 1], dst[y, x, 2] = r, g, b
            if need_mean:
                row_acc += _WR * r + _WG * g + _WB * b
        acc += row_acc
    return acc / (H * W) if need_mean else 0.0


@njit(**_JIT)
def color_pass2(img, p, mean):
    """In place: contrast (with ``mean``) and the jitter ops after it, then grayscale.
    Returns False (and does nothing) when there is nothing left to apply."""
    ops = np.empty(4, np.int64)
    n = 0
    after = False
    for k in range(4):
        op = int(p[P_ORDER + k])
        if op == 1:
            after = True
        if after and _active(p, op):
            ops[n] = op
            n += 1
    gray = p[P_GRAY] > 0
    if n == 0 and not gray:
        return False
    H, W = img.shape[0], img.shape[1]
    for y in range(H):
        for x in range(W):
            r, g, b = img[y, x, 0], img[y, x, 1], img[y, x, 2]
            for k in range(n):
                r, g, b = _jitter_op(ops[k], p[P_FACT + ops[k]], r, g, b, mean)
            if gray:
                r = _WR * r + _WG * g + _WB * b
                g = r
                b = r
            img[y, x, 0], img[y, x, 1], img[y, x, 2] = r, g, b
    return True


@njit(**_JIT)
def gaussian_weights(sigma, radius):
    """torchvision's _get_gaussian_kernel1d for kernel size 2*radius+1."""
    w = np.empty(2 * radius + 1, np.float32)
    total = 0.0
    for t in range(-radius, radius + 1):
        v = math.exp(-0.5 * (t / sigma) ** 2)
        w[t + radius] = v
        total += v
    for t in range(2 * radius + 1):
        w[t] = w[t] / total
    return w


@njit(inline="always", **_JIT)
def _reflect(i, n):
    # torch 'reflect' padding (edge not repeated), as torchvision's gaussian_blur uses.
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


@njit(**_JIT)
def blur_rows(src, dst, w):
    """Horizontal pass of the separable blur: dst[y, x] = sum_t w[t] src[y, reflect(x + t - r)]."""
    H, W = src.shape[0], src.shape[1]
    r = (w.shape[0] - 1) // 2
    for y in range(H):
        s = src[y].reshape(W * 3)
        d = dst[y].reshape(W * 3)
        lo, hi = min(r, W), max(W - r, min(r, W))
        for xc in range(lo * 3, hi * 3):  # interior: no reflection, contiguous taps
            acc = np.float32(0.0)
            for t in range(2 * r + 1):
                acc += w[t] * s[xc + 3 * (t - r)]
            d[xc] = acc
        for x in range(W):  # borders
            if lo <= x < hi:
                continue
            for c in range(3):
                acc = np.float32(0.0)
                for t in range(2 * r + 1):
                    acc += w[t] * s[3 * _reflect(x + t - r, W) + c]
                d[3 * x + c] = acc


@njit(**_JIT)
def blur_col_row(src, y, w, row):
    """Vertical pass for one output row: row = sum_t w[t] src[reflect(y + t - r)] (contiguous)."""
    H, W = src.shape[0], src.shape[1]
    r = (w.shape[0] - 1) // 2
    row[:] = 0.0
    for t in range(2 * r + 1):
        s = src[_reflect(y + t - r, H)].reshape(W * 3)
        wt = w[t]
        for xc in range(W * 3):
            row[xc] += wt * s[xc]


@njit(**_JIT)
def emit_row(row, out, y, flip, scale, shift, layout):
    """Write one float row (W*3, RGB interleaved) to the output view, mirrored when ``flip``.
    layout OUT_HWC / OUT_CHW: float32 v * scale[c] + shift[c]; OUT_U8: uint8 HWC, rounded."""
    W = row.shape[0] // 3
    for x in range(W):
        xs = W - 1 - x if flip else x
        for c in range(3):
            v = row[3 * xs + c]
            if layout == OUT_U8:
                out[y, x, c] = min(max(v, 0.0), 255.0) + 0.5
            elif layout == OUT_CHW:
                out[c, y, x] = v * scale[c] + shift[c]
            else:
                out[y, x, c] = v * scale[c] + shift[c]


@njit(**_JIT)
def augment_view(src, out, p, blur_cap, work, work2, row, scale, shift, layout):
    """One view, all ops in torchvision MoCo-v2 order: jitter -> grayscale -> blur -> flip ->
    normalise. src: H x W x 3 uint8; work/work2: H x W x 3 float32 scratch; row: W*3 float32."""
    H, W = src.shape[0], src.shape[1]
    mean = color_pass1(src, work, p)
    color_pass2(work, p, mean)
    flip = p[P_FLIP] > 0
    sigma = p[P_SIGMA]
    if p[P_BLUR] > 0:
        radius = min(int(math.ceil(3.0 * sigma)), blur_cap, H - 1, W - 1)
        w = gaussian_weights(sigma, radius)
        blur_rows(work, work2, w)
        for y in range(H):
            blur_col_row(work2, y, w, row)
            emit_row(row, out, y, flip, scale, shift, layout)
    else:
        for y in range(H):
            emit_row(work[y].reshape(W * 3), out, y, flip, scale, shift, layout)
