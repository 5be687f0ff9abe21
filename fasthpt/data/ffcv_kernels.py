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

_JIT = dict(nogil=True, fastmath=True, error_model="numpy")

_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 constants (Steele et al. 2014)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: the splitmix64 increment
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2^-53: top 53 bits -> a double in [0, 1)

# Draw numbers: the crop uses 4 per attempt (10 attempts, as torchvision); the view's other
# parameters start at _AUG so the two never overlap.
_CROP_TRIES = 10
# numba note. Several FFCV pipelines in one process share these kernels. With numba 0.68 the second
# pipeline's compile failed with a KeyError inside a kernel's overload table (dispatcher.py,
# nopython_signatures) after the first had compiled it, whenever a kernel had been compiled for
# both a Literal[int] and an int64 argument, or was a ctypes-calling dispatcher shared between
# pipelines. Root cause not identified; the failures stopped with: no literal or closure-constant
# arguments to shared kernels (this int64 zero, np.int64(...) in ffcv_ops), libffcv calls
# compiled per pipeline, pipelines compiled on the building thread. Tests build several loaders
# in one process, with no on-disk numba cache (the cache had hidden this on warm runs).
_I0 = np.int64(0)
_AUG = 64

# torchvision's rgb_to_grayscale weights for tensors (ITU-R 601-2 luma).
_WR, _WG, _WB = 0.2989, 0.587, 0.114

# Slots of the policy vector `cfg` handed to sample_view_params (built by ffcv_ops.policy_vector):
# the AugPolicy fields of the same names, and the sigma range for the view's side. Brightness,
# contrast, saturation and hue follow each other, in the order of the factors (P_FACT).
C_JITTER_P, C_BRIGHTNESS, C_CONTRAST, C_SATURATION, C_HUE = 0, 1, 2, 3, 4
C_GRAY_P, C_BLUR_P, C_SIGMA_LO, C_SIGMA_HI, C_FLIP_P = 5, 6, 7, 8, 9
CFG_LEN = 10
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
def decode_denominator(min_side, res):
    """Largest d in (1, 2, 4, 8) with min_side / d >= res. libjpeg-turbo then decodes at 1/d scale
    (DCT-domain downscaling: a low-pass, and less to decode and resize) and every crop is still
    downscaled to res afterwards, never upsampled from a reduced decode."""
    d = 1
    while d < 8 and min_side >= 2 * d * res:
        d *= 2
    return d


@njit(**_JIT)
def scale_box(top, left, h, w, d, height, width):
    """A crop box of the full image -> the box covering it in the 1/d decode (height x width)."""
    t, l = top // d, left // d
    b = min((top + h + d - 1) // d, height)
    r = min((left + w + d - 1) // d, width)
    return t, l, max(b - t, 1), max(r - l, 1)


@njit(**_JIT)
def sample_view_params(key, cfg, out):
    """Draw one view's jitter / gray / blur / flip parameters into ``out`` (PARAMS_LEN floats).

    cfg: the policy vector (slots C_*). Jitter factors: brightness/contrast/saturation ~
    U[max(0, 1-s), 1+s], hue ~ U[-h, h], applied in a uniformly random order (torchvision
    ColorJitter.get_params). Factors and sigma are drawn whether or not their op is applied
    (P_JIT / P_BLUR say that), so their statistics can be checked.
    """
    out[P_JIT] = 1.0 if uniform(key, _AUG) < cfg[C_JITTER_P] else 0.0
    for k in range(3):  # brightness, contrast, saturation
        s = cfg[C_BRIGHTNESS + k]
        lo = max(0.0, 1.0 - s)
        out[P_FACT + k] = lo + (1.0 + s - lo) * uniform(key, _AUG + 1 + k) if s > 0 else 1.0
    h = cfg[C_HUE]
    out[P_FACT + 3] = -h + 2.0 * h * uniform(key, _AUG + 4) if h > 0 else 0.0
    for k in range(4):  # Fisher-Yates shuffle of (0, 1, 2, 3)
        out[P_ORDER + k] = k
    for k in range(3, 0, -1):
        j = int(uniform(key, _AUG + 5 + k) * (k + 1))
        tmp = out[P_ORDER + k]
        out[P_ORDER + k] = out[P_ORDER + j]
        out[P_ORDER + j] = tmp
    out[P_GRAY] = 1.0 if uniform(key, _AUG + 9) < cfg[C_GRAY_P] else 0.0
    out[P_BLUR] = 1.0 if uniform(key, _AUG + 10) < cfg[C_BLUR_P] else 0.0
    out[P_SIGMA] = cfg[C_SIGMA_LO] + (cfg[C_SIGMA_HI] - cfg[C_SIGMA_LO]) * uniform(key, _AUG + 11)
    out[P_FLIP] = 1.0 if uniform(key, _AUG + 12) < cfg[C_FLIP_P] else 0.0


_F0, _F1, _F255 = np.float32(0.0), np.float32(1.0), np.float32(255.0)
_FR, _FG, _FB = np.float32(_WR), np.float32(_WG), np.float32(_WB)


@njit(inline="always", **_JIT)
def _clamp(v):
    return min(max(v, _F0), _F255)


# ---- crop + resize: antialiased bilinear, the filter of torchvision's resize(antialias=True) and
# PIL's BILINEAR (a triangle whose support widens with the downscale factor; plain bilinear with
# half-pixel centres when upscaling). Separable: vertical first over contiguous rows, then horizontal.

@njit(**_JIT)
def aa_weights(in_size, out_size, start, scale):
    """Per output index i: first input index, tap count, and normalised weights (rows of ``w``).
    Output i is centred on input coordinate start + (i + 0.5) * scale (scale 0: in_size / out_size,
    the whole input onto the whole output); taps stay inside [0, in_size)."""
    if scale <= 0.0:
        scale = in_size / out_size
    support = max(scale, 1.0)
    inv = 1.0 / support
    kmax = 2 * int(math.ceil(support)) + 1
    first = np.empty(out_size, np.int64)
    count = np.empty(out_size, np.int64)
    w = np.zeros((out_size, kmax), np.float32)
    for i in range(out_size):
        center = start + (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        total = 0.0
        for j in range(hi - lo):
            v = max(0.0, 1.0 - abs((j + lo - center + 0.5) * inv))
            w[i, j] = v
            total += v
        for j in range(hi - lo):
            w[i, j] = w[i, j] / total
        first[i], count[i] = lo, hi - lo
    return first, count, w


@njit(**_JIT)
def _taps_row(src, x0, fx, cx, wx, dst):
    """dst (C*3) = horizontal taps over the interleaved RGB row src, starting at column x0."""
    for x in range(fx.shape[0]):
        base = (x0 + fx[x]) * 3
        if cx[x] == 2:  # every tap count when upscaling: unrolled
            w0, w1 = wx[x, 0], wx[x, 1]
            a0 = w0 * src[base] + w1 * src[base + 3]
            a1 = w0 * src[base + 1] + w1 * src[base + 4]
            a2 = w0 * src[base + 2] + w1 * src[base + 5]
        else:
            a0 = a1 = a2 = _F0
            for k in range(cx[x]):
                wk = wx[x, k]
                a0 += wk * src[base + 3 * k]
                a1 += wk * src[base + 3 * k + 1]
                a2 += wk * src[base + 3 * k + 2]
        dst[3 * x], dst[3 * x + 1], dst[3 * x + 2] = a0, a1, a2


@njit(**_JIT)
def _sum_rows(rows, first, count, w, i, dst):
    """dst = sum_k w[i, k] * rows[first[i] + k] (whole contiguous rows: vectorised)."""
    n = dst.shape[0]
    r0 = rows[first[i]]
    wt = w[i, 0]
    for x in range(n):
        dst[x] = wt * r0[x]
    for k in range(1, count[i]):
        r = rows[first[i] + k]
        wt = w[i, k]
        for x in range(n):
            dst[x] += wt * r[x]


@njit(**_JIT)
def resize_crop_aa(img, top, left, h, w, out, tmp):
    """out (R x C x 3 uint8) = img[top:top+h, left:left+w] (H x W x 3 uint8, C-contiguous) resized
    with the antialiased bilinear filter, rounded (torchvision's resized_crop). tmp: float32
    scratch of at least max(R, h) * max(C, w) * 3 + C * 3."""
    R, C = out.shape[0], out.shape[1]
    _resize_aa(img, top, left, h, w, aa_weights(h, R, 0.0, 0.0), aa_weights(w, C, 0.0, 0.0), out, tmp)


@njit(**_JIT)
def center_crop_aa(img, resize_to, out, tmp):
    """torchvision's Resize(resize_to) (shorter side; antialiased bilinear) then CenterCrop to
    out's size, in one pass: only the output pixels are computed, from the whole image."""
    H, W = img.shape[0], img.shape[1]
    R, C = out.shape[0], out.shape[1]
    short, long = min(H, W), max(H, W)
    new_long = int(resize_to * long / short)  # torchvision _compute_resized_output_size
    new_h, new_w = (new_long, resize_to) if W <= H else (resize_to, new_long)
    top = int(round((new_h - R) / 2.0))  # torchvision center_crop
    left = int(round((new_w - C) / 2.0))
    sy, sx = H / new_h, W / new_w
    _resize_aa(img, _I0, _I0, H, W, aa_weights(H, R, top * sy, sy), aa_weights(W, C, left * sx, sx), out, tmp)


@njit(**_JIT)
def _resize_aa(img, top, left, h, w, wy_, wx_, out, tmp):
    """The separable resize of the region img[top:top+h, left:left+w] with per-axis weights
    (aa_weights); the axis that shrinks the data most goes first."""
    R, C = out.shape[0], out.shape[1]
    fy, cy, wy = wy_
    fx, cx, wx = wx_
    flat = out.reshape(R, C * 3)
    if h >= R:  # vertical first: R rows of the crop's width, then the taps along each row
        w3 = w * 3
        crop = img[top:top + h].reshape(h, img.shape[1] * 3)[:, left * 3:left * 3 + w3]
        t = tmp[: R * w3].reshape(R, w3)
        line = tmp[R * w3: R * w3 + C * 3]
        for i in range(R):
            _sum_rows(crop, fy, cy, wy, i, t[i])
            _taps_row(t[i], _I0, fx, cx, wx, line)
            for x in range(C * 3):
                flat[i, x] = _clamp(line[x]) + np.float32(0.5)
    else:  # upscaling rows: taps along the h crop rows first, then R weighted sums of them
        c3 = C * 3
        t = tmp[: h * c3].reshape(h, c3)
        line = tmp[h * c3: h * c3 + c3]
        for y in range(h):
            _taps_row(img[top + y].reshape(-1), left, fx, cx, wx, t[y])
        for i in range(R):
            _sum_rows(t, fy, cy, wy, i, line)
            for x in range(c3):
                flat[i, x] = _clamp(line[x]) + np.float32(0.5)


# ---- pixel kernels. Layout: planar float32 scratch (3, H, W); each op runs over one row of the
# three planes at a time (op-outer, pixel-inner, branch-free bodies) so LLVM vectorises the loops
# and a row stays in L1 while every op of the chain passes over it.

@njit(**_JIT)
def _brightness_row(r, g, b, f):  # blend with black
    for i in range(r.shape[0]):
        r[i] = _clamp(f * r[i])
        g[i] = _clamp(f * g[i])
        b[i] = _clamp(f * b[i])


@njit(**_JIT)
def _contrast_row(r, g, b, f, mean):  # blend with the image's mean gray level
    m = (_F1 - f) * mean
    for i in range(r.shape[0]):
        r[i] = _clamp(f * r[i] + m)
        g[i] = _clamp(f * g[i] + m)
        b[i] = _clamp(f * b[i] + m)


@njit(**_JIT)
def _saturation_row(r, g, b, f):  # blend with each pixel's gray level
    for i in range(r.shape[0]):
        m = (_F1 - f) * (_FR * r[i] + _FG * g[i] + _FB * b[i])
        r[i] = _clamp(f * r[i] + m)
        g[i] = _clamp(f * g[i] + m)
        b[i] = _clamp(f * b[i] + m)


@njit(inline="always", **_JIT)
def _hsv_channel(n, h6, mx, d):
    # HSV -> RGB without branches on the sector: channel = V - V*S*clamp(min(k, 4 - k), 0, 1),
    # k = (n + H/60) mod 6, n = 5, 3, 1 for R, G, B; here V = max and V*S = max - min.
    k = n + h6
    k = k - np.float32(6.0) if k >= np.float32(6.0) else k
    return mx - d * min(max(min(k, np.float32(4.0) - k), _F0), _F1)


@njit(**_JIT)
def _hue_row(r, g, b, shift):
    """torchvision's adjust_hue (rgb -> hsv, h + shift mod 1, hsv -> rgb) in one branch-free pass;
    hue in sixths of a turn. Gray pixels (max == min) come back unchanged, as in torchvision."""
    s6 = np.float32(6.0 * shift)
    six = np.float32(6.0)
    for i in range(r.shape[0]):
        rr, gg, bb = r[i], g[i], b[i]
        mx = max(rr, gg, bb)
        mn = min(rr, gg, bb)
        d = mx - mn
        inv = _F1 / d if d > _F0 else _F0
        if mx == rr:
            h6 = (gg - bb) * inv
        elif mx == gg:
            h6 = np.float32(2.0) + (bb - rr) * inv
        else:
            h6 = np.float32(4.0) + (rr - gg) * inv
        h6 = h6 + s6
        h6 = h6 - six * np.floor(h6 / six)
        r[i] = _hsv_channel(np.float32(5.0), h6, mx, d)
        g[i] = _hsv_channel(np.float32(3.0), h6, mx, d)
        b[i] = _hsv_channel(np.float32(1.0), h6, mx, d)


@njit(**_JIT)
def _gray_row(r, g, b):
    for i in range(r.shape[0]):
        v = _FR * r[i] + _FG * g[i] + _FB * b[i]
        r[i] = v
        g[i] = v
        b[i] = v


@njit(**_JIT)
def _apply(op, f, r, g, b, mean):
    f32 = np.float32(f)
    if op == 0:
        _brightness_row(r, g, b, f32)
    elif op == 1:
        _contrast_row(r, g, b, f32, np.float32(mean))
    elif op == 2:
        _saturation_row(r, g, b, f32)
    else:
        _hue_row(r, g, b, f)


@njit(**_JIT)
def _active(p, op):
    f = p[P_FACT + op]
    return p[P_JIT] > 0 and (f != 0.0 if op == 3 else f != 1.0)


@njit(**_JIT)
def _split_ops(p):
    """(ops before contrast, count, ops from contrast on, count): the active jitter ops in drawn order."""
    pre = np.empty(4, np.int64)
    post = np.empty(4, np.int64)
    npre = npost = 0
    seen_contrast = False
    for k in range(4):
        op = int(p[P_ORDER + k])
        seen_contrast = seen_contrast or op == 1
        if _active(p, op):
            if seen_contrast:
                post[npost] = op
                npost += 1
            else:
                pre[npre] = op
                npre += 1
    return pre, npre, post, npost


@njit(**_JIT)
def color_view(src, work, p):
    """work (3, H, W float32) = jitter (drawn order) then grayscale of src (H, W, 3 uint8).

    Contrast blends with the mean gray level of the image as it is when contrast is reached, so
    the ops before it run in a first pass that also sums the gray level; the rest in a second."""
    H, W = src.shape[0], src.shape[1]
    pre, npre, post, npost = _split_ops(p)
    gray = p[P_GRAY] > 0
    acc = 0.0
    for y in range(H):
        r, g, b = work[0, y], work[1, y], work[2, y]
        s = src[y].reshape(W * 3)
        for x in range(W):
            r[x] = s[3 * x]
            g[x] = s[3 * x + 1]
            b[x] = s[3 * x + 2]
        for k in range(npre):
            _apply(pre[k], p[P_FACT + pre[k]], r, g, b, 0.0)
        if npost > 0 and post[0] == 1:
            row = _F0
            for x in range(W):
                row += _FR * r[x] + _FG * g[x] + _FB * b[x]
            acc += row
    mean = acc / (H * W)
    if npost == 0 and not gray:
        return
    for y in range(H):
        r, g, b = work[0, y], work[1, y], work[2, y]
        for k in range(npost):
            _apply(post[k], p[P_FACT + post[k]], r, g, b, mean)
        if gray:
            _gray_row(r, g, b)


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
    """Horizontal pass of the separable blur on planar (3, H, W) images, reflect borders."""
    H, W = src.shape[1], src.shape[2]
    r = (w.shape[0] - 1) // 2
    for c in range(3):
        for y in range(H):
            s, d = src[c, y], dst[c, y]
            # interior, tap-outer over slice views indexed from 0 (a vectorised axpy; shifted
            # signed indices would keep numba's negative-index wraparound test in the loop)
            n = W - 2 * r
            dv = d[r:W - r]
            s0 = s[0:n]
            w0 = w[0]
            for x in range(n):
                dv[x] = w0 * s0[x]
            for t in range(1, 2 * r + 1):
                st = s[t:t + n]
                wt = w[t]
                for x in range(n):
                    dv[x] += wt * st[x]
            for x in range(min(r, W)):  # borders
                for xx in (x, W - 1 - x):
                    acc = _F0
                    for t in range(2 * r + 1):
                        acc += w[t] * s[_reflect(xx + t - r, W)]
                    d[xx] = acc


@njit(**_JIT)
def blur_col_row(src, c, y, w, row):
    """Vertical pass for one output row of plane c: row = sum_t w[t] src[c, reflect(y + t - r)]."""
    H, W = src.shape[1], src.shape[2]
    r = (w.shape[0] - 1) // 2
    row[:] = _F0
    for t in range(2 * r + 1):
        s = src[c, _reflect(y + t - r, H)]
        wt = w[t]
        for x in range(W):
            row[x] += wt * s[x]


@njit(**_JIT)
def emit_row(row, out, c, y, flip, scale, shift, layout):
    """Write one row of plane c to the output view, mirrored when ``flip``. layout OUT_CHW /
    OUT_HWC: float32 v * scale[c] + shift[c]; OUT_U8: uint8 H x W x 3, rounded."""
    W = row.shape[0]
    a, b = np.float32(scale[c]), np.float32(shift[c])
    if layout == OUT_CHW:
        o = out[c, y]
        if flip:
            for x in range(W):
                o[x] = row[W - 1 - x] * a + b
        else:
            for x in range(W):
                o[x] = row[x] * a + b
    else:
        for x in range(W):
            v = row[W - 1 - x] if flip else row[x]
            if layout == OUT_U8:
                out[y, x, c] = _clamp(v) + np.float32(0.5)
            else:
                out[y, x, c] = v * a + b


@njit(**_JIT)
def augment_view(src, out, p, blur_cap, work, work2, row, scale, shift, layout):
    """One view, all ops in torchvision MoCo-v2 order: jitter -> grayscale -> blur -> flip ->
    normalise. src: H x W x 3 uint8; work/work2: 3 x H x W float32 scratch; row: W float32."""
    H, W = src.shape[0], src.shape[1]
    color_view(src, work, p)
    flip = p[P_FLIP] > 0
    if p[P_BLUR] > 0:
        sigma = p[P_SIGMA]
        radius = min(int(math.ceil(3.0 * sigma)), blur_cap, H - 1, W - 1)
        w = gaussian_weights(sigma, radius)
        blur_rows(work, work2, w)
        for c in range(3):
            for y in range(H):
                blur_col_row(work2, c, y, w, row)
                emit_row(row, out, c, y, flip, scale, shift, layout)
    else:
        for c in range(3):
            for y in range(H):
                emit_row(work[c, y], out, c, y, flip, scale, shift, layout)
