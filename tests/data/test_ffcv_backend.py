"""ffcv backend: compiled kernels against torchvision with fixed parameters, the random draws against
the policy, and the loader contract (shape, normalisation, repeatability, ranks, eval).

numba compiles each FFCV pipeline (a few seconds each), so loaders are session fixtures and there
are few of them; the kernels are plain numba functions called directly.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from checks import (
    check_crop_areas,
    check_epoch,
    check_eval_labels,
    check_eval_matches,
    check_images,
    check_partition,
    check_policy_draws,
    check_ssl_batch,
    draw_stats,
    eval_loader,
    ssl_loader,
)

from fasthpt.data import common, draws, ffcv_ops
from fasthpt.data import ffcv_backend as fb
from fasthpt.data import ffcv_compat as compat
from fasthpt.data import ffcv_kernels as K
from fasthpt.data.policy import AugPolicy
from fasthpt.errors import UserError
from fasthpt.manifest import load_manifest

# Kernels and torchvision agree to float32 rounding (measured max ~6e-7 of the 0..1 range).
OP_TOL = 1e-5
SIDE = 48  # tiny_data's images


def _image(h=40, w=52, seed=0):
    rng = np.random.default_rng(seed)
    # smooth colour gradients plus noise: every hue sector, some saturated and some gray pixels
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 60], -1)
    img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    img[:4, :4] = 128  # a gray patch (hue undefined)
    return img


IMG = _image()
T_IMG = torch.from_numpy(IMG).permute(2, 0, 1).float() / 255


def _params(**kw):
    p = np.zeros(K.PARAMS_LEN)
    p[K.P_FACT:K.P_FACT + 4] = (1.0, 1.0, 1.0, 0.0)
    p[K.P_ORDER:K.P_ORDER + 4] = (0, 1, 2, 3)
    for name, value in kw.items():
        if name == "factors":
            p[K.P_FACT:K.P_FACT + 4] = value
            p[K.P_JIT] = 1.0
        elif name == "order":
            p[K.P_ORDER:K.P_ORDER + 4] = value
        else:
            p[getattr(K, "P_" + name.upper())] = value
    return p


def _run(p, img=IMG, blur_cap=100, mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), layout=K.OUT_CHW):
    """augment_view on one image; float layouts return 3 x H x W (0..1 units with the default mean/std)."""
    h, w = img.shape[:2]
    out = np.zeros((3, h, w) if layout == K.OUT_CHW else (h, w, 3), np.uint8 if layout == K.OUT_U8 else np.float32)
    std = np.asarray(std, np.float32)
    K.augment_view(img, out, p, blur_cap, np.empty((3, h, w), np.float32), np.empty((3, h, w), np.float32),
                   np.empty(w, np.float32), (1 / std).astype(np.float32),
                   (-np.asarray(mean, np.float32) / std).astype(np.float32), layout)
    t = torch.from_numpy(out)
    return t if layout == K.OUT_CHW else t.permute(2, 0, 1)


def _close(a, b, tol=OP_TOL):
    err = (a - b).abs().max().item()
    assert err < tol, err


# ---------------------------------------------------------------- kernels vs torchvision, fixed params

@pytest.mark.parametrize("op,factor,ref", [
    (0, 1.3, F.adjust_brightness), (0, 0.6, F.adjust_brightness),
    (1, 0.65, F.adjust_contrast), (1, 1.4, F.adjust_contrast),
    (2, 1.35, F.adjust_saturation), (2, 0.6, F.adjust_saturation),
    (3, 0.31, F.adjust_hue), (3, -0.4, F.adjust_hue), (3, 0.5, F.adjust_hue),
])
def test_each_jitter_op_matches_torchvision(op, factor, ref):
    factors = [1.0, 1.0, 1.0, 0.0]
    factors[op] = factor
    _close(_run(_params(factors=factors)), ref(T_IMG, factor))


@pytest.mark.parametrize("order", [(3, 1, 2, 0), (1, 0, 3, 2), (2, 3, 0, 1)])
def test_jitter_chain_in_drawn_order(order):
    """ColorJitter's random order, contrast anywhere in it (its mean is taken where it is applied)."""
    factors = (1.25, 0.7, 1.3, -0.2)
    fns = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    ref = T_IMG
    for op in order:
        ref = fns[op](ref, factors[op])
    _close(_run(_params(factors=factors, order=order)), ref)


def test_jitter_not_applied_when_not_drawn():
    p = _params(factors=(1.4, 1.4, 1.4, 0.3))
    p[K.P_JIT] = 0.0
    _close(_run(p), T_IMG, 1e-7)


def test_grayscale_flip_and_normalisation():
    _close(_run(_params(gray=1)), F.rgb_to_grayscale(T_IMG, 3))
    _close(_run(_params(flip=1)), F.hflip(T_IMG), 1e-7)
    mean, std = (120.0, 110.0, 100.0), (60.0, 58.0, 57.0)
    ref = F.normalize(T_IMG * 255, mean, std)
    _close(_run(_params(flip=1), mean=mean, std=std), F.hflip(ref), 1e-4)
    hwc = _run(_params(), mean=mean, std=std, layout=K.OUT_HWC)
    _close(hwc, ref, 1e-4)
    u8 = _run(_params(flip=1), layout=K.OUT_U8)  # the CUDA path: raw uint8, normalised on the device
    assert torch.equal(u8, F.hflip(torch.from_numpy(IMG).permute(2, 0, 1)))


@pytest.mark.parametrize("sigma,res", [(0.3, 224), (1.0, 224), (2.0, 224), (2.0, 52)])
def test_blur_matches_torchvision_with_kernel_sized_by_sigma(sigma, res):
    policy = AugPolicy()
    size = policy.blur_kernel_size(res, sigma)  # radius ceil(3 sigma), capped at ~10% of res
    _, cap = ffcv_ops.policy_vector(policy, res)
    assert 2 * cap + 1 >= size and (2 * cap + 1 == size or size == 2 * math.ceil(3 * sigma) + 1)
    _close(_run(_params(blur=1, sigma=sigma), blur_cap=cap), F.gaussian_blur(T_IMG, [size, size], [sigma, sigma]))
    _close(_run(_params(blur=0, sigma=sigma), blur_cap=cap), T_IMG, 1e-7)  # drawn sigma, blur not applied


def test_full_view_in_moco_order():
    """jitter -> gray -> blur -> flip -> normalise, as the MoCo-v2 / HPT transform list."""
    factors, order, sigma = (0.8, 1.2, 0.7, 0.15), (2, 3, 0, 1), 1.3
    ref = T_IMG
    for op in order:
        ref = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)[op](ref, factors[op])
    ref = F.hflip(F.gaussian_blur(F.rgb_to_grayscale(ref, 3), [9, 9], [sigma, sigma]))
    got = _run(_params(factors=factors, order=order, gray=1, blur=1, sigma=sigma, flip=1), blur_cap=4)
    _close(got, ref)


@pytest.mark.parametrize("box,res", [((10, 20, 30, 32), 16), ((3, 1, 12, 50), 24), ((0, 0, 40, 52), 40),
                                     ((7, 1, 20, 9), 30)])
def test_crop_resize_matches_torchvision_antialiased_resized_crop(box, res):
    """Down, up and mixed (down one axis, up the other) against F.resized_crop(antialias=True):
    equal up to the rounding to uint8."""
    out = np.zeros((res, res, 3), np.uint8)
    K.resize_crop_aa(IMG, *box, out, np.empty(max(res, 52) * max(res, 52) * 3 + res * 3, np.float32))
    ref = F.resized_crop(torch.from_numpy(IMG).permute(2, 0, 1).float(), *box, [res, res], antialias=True)
    err = (torch.from_numpy(out).permute(2, 0, 1).float() - ref).abs()
    assert err.max() <= 0.5 + 1e-3, err.max()


@pytest.mark.parametrize("h,w,res", [(48, 48, 32), (40, 52, 24), (60, 45, 16)])
def test_eval_crop_matches_torchvision_resize_then_center_crop(h, w, res):
    img = _image(h, w)
    size = round(res * 256 / 224)
    out = np.zeros((res, res, 3), np.uint8)
    K.center_crop_aa(img, size, out, np.empty(max(h, res) * max(w, res) * 3 + res * 3, np.float32))
    ref = F.center_crop(F.resize(torch.from_numpy(img).permute(2, 0, 1).float(), size, antialias=True), res)
    assert (torch.from_numpy(out).permute(2, 0, 1).float() - ref).abs().max() <= 0.5 + 1e-3


def test_reduced_decode_only_when_every_crop_stays_at_least_res():
    assert [K.decode_denominator(m, 64) for m in (63, 127, 128, 255, 256, 512, 4096)] == [1, 1, 2, 2, 4, 8, 8]
    for box in ((0, 0, 48, 48), (5, 7, 33, 20), (47, 40, 1, 8)):
        t, l, h, w = K.scale_box(*box, 2, 24, 24)
        top, left, bh, bw = box  # the scaled box covers the full-size one, inside the scaled image
        assert 2 * t <= top and 2 * l <= left and 2 * (t + h) >= min(top + bh, 48) and 2 * (l + w) >= left + bw
        assert t + h <= 24 and l + w <= 24 and h >= 1 and w >= 1


# ---------------------------------------------------------------- random draws vs the policy

def _view_draws(seed, epoch, index, h, w, policy, res):
    """Both views' draws of one sample, as Python values (fasthpt.data.draws: the kernels' numbers,
    tests/data/test_draws.py)."""
    pair = draws.view_draws(seed, epoch, [index], [h], [w], policy, res, views=2)
    return tuple({k: (tuple(v[0].tolist()) if v.ndim > 1 else v[0].item()) for k, v in d.items()} for d in pair)


def _draws(policy, n=1500, seed=3, side=SIDE):
    pair = draws.view_draws(seed, 0, np.arange(n // 2), np.full(n // 2, side), np.full(n // 2, side), policy, 32, 2)
    return draw_stats([{k: torch.as_tensor(v) for k, v in d.items()} for d in pair], side, side)


@pytest.mark.parametrize("preset", ["mocov2", "crop-only", "no-gray"])
def test_draws_follow_the_policy(preset):
    policy = AugPolicy.preset(preset)
    got = _draws(policy)
    check_policy_draws(got, policy, SIDE, SIDE, res=32)
    if policy.uses_color:  # ColorJitter's op order: all 24 permutations, none favoured
        counts = np.unique([str(o) for o in got["order"]], return_counts=True)[1]
        assert len(counts) == 24 and counts.max() < 3 * counts.min()


def test_policy_vector_slots_round_trip_through_the_kernels():
    """Builder and kernels agree on the named slots: a policy whose fields all differ, drawn by the
    kernels from its vector, gives back each field's probability or range (a swapped pair of slots
    fails a frequency or a bound); the radius cap is the policy's kernel cap."""
    policy = AugPolicy(jitter_p=0.9, brightness=0.1, contrast=0.2, saturation=0.3, hue=0.05, gray_p=0.3, blur_p=0.6,
                       blur_sigma=[0.7, 0.8], blur_ref_res=0, flip_p=0.15)
    cfg, radius = ffcv_ops.policy_vector(policy, 64)
    slots = [getattr(K, name) for name in dir(K) if name.startswith("C_")]
    assert sorted(slots) == list(range(K.CFG_LEN)) == list(range(len(cfg)))
    assert 2 * radius + 1 == policy.blur_kernel_cap(64)
    ekey = np.uint64(K.epoch_key(3, 0))
    p = np.empty((3000, K.PARAMS_LEN))
    for i in range(3000):
        K.sample_view_params(np.uint64(K.view_key(ekey, i, 0)), cfg, p[i])
    got = {"jitter": p[:, K.P_JIT] > 0, "gray": p[:, K.P_GRAY] > 0, "blur": p[:, K.P_BLUR] > 0,
           "flip": p[:, K.P_FLIP] > 0, "sigma": p[:, K.P_SIGMA], "area": _draws(policy, n=3000)["area"]}
    got.update({name: p[:, K.P_FACT + i] for i, name in enumerate(("brightness", "contrast", "saturation", "hue"))})
    check_policy_draws(got, policy, SIDE, SIDE, res=64)


def test_crop_areas_on_a_non_square_image():
    policy = AugPolicy()
    crops = draws.view_draws(9, 2, np.arange(1500), np.full(1500, 40), np.full(1500, 90), policy, 32, 1)[0]["crop"]
    assert (crops[:, 0] + crops[:, 2] <= 40).all() and (crops[:, 1] + crops[:, 3] <= 90).all()
    check_crop_areas(crops[:, 2] * crops[:, 3] / (40 * 90), policy, 90, 40)


def test_draws_depend_on_seed_epoch_sample_and_view():
    policy = AugPolicy()
    base = _view_draws(1, 0, 5, SIDE, SIDE, policy, 32)
    assert base == _view_draws(1, 0, 5, SIDE, SIDE, policy, 32)
    assert base[0] != base[1]
    for other in ((2, 0, 5), (1, 1, 5), (1, 0, 6)):
        assert _view_draws(*other, SIDE, SIDE, policy, 32) != base


# ---------------------------------------------------------------- the loader

def _ssl(tiny_data, **kw):
    opts = dict(split="train", res=32, batch_size=8, policy=AugPolicy(), workers=1, device=torch.device("cpu"),
                seed=0, rank=0, world_size=1, drop_last=True, channels_last=False)
    opts.update(kw)
    return fb.build_ssl_loader(load_manifest(tiny_data), **opts)


# At 16 px most crops of the 48 px images are >= 32 px: the decoder reads them from a 1/2-scale
# JPEG decode, the others from the full decode; both paths meet the reference test below.
DEBUG_RES = 16


@pytest.fixture(scope="session")
def debug_loader(tiny_data):
    return _ssl(tiny_data, debug=True, res=DEBUG_RES)


def _epoch(loader, epoch):
    """One epoch's batches, their views cloned (FFCV refills a CPU batch's slot once the next is drawn)."""
    loader.set_epoch(epoch)
    return [b._replace(views=tuple(v.clone() for v in b.views)) if isinstance(b, common.DebugBatch)
            else tuple(x.clone() for x in b) for b in loader]


def test_ssl_batches_and_epoch(tiny_data, debug_loader):
    manifest = load_manifest(tiny_data)
    assert debug_loader.backend == "ffcv" and len(debug_loader) == 4 and debug_loader.num_samples == 32
    for batch in check_epoch(debug_loader, drop_last=True, batch_size=8):
        check_ssl_batch(*batch.views, manifest, batch_size=8, res=DEBUG_RES)
        assert batch.labels is None and len(batch.indices) == 8
        assert len(batch.draws) == 2 and all(len(t) == 8 for d in batch.draws for t in d.values())


def _reference_view(img, d, policy, manifest, res):
    """torchvision, with the drawn parameters: RandomResizedCrop -> jitter -> gray -> blur -> flip -> normalise."""
    top, left, h, w = d["crop"]
    x = F.resized_crop(torch.from_numpy(img).permute(2, 0, 1).float() / 255, top, left, h, w, [res, res],
                       antialias=True)
    if d["jitter"]:
        for op in d["order"]:
            x = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)[op](x, d["factors"][op])
    if d["gray"]:
        x = F.rgb_to_grayscale(x, 3)
    if d["blur"]:
        k = policy.blur_kernel_size(res, d["sigma"])
        x = F.gaussian_blur(x, [k, k], [d["sigma"]] * 2)
    if d["flip"]:
        x = F.hflip(x)
    return F.normalize(x * 255, manifest.mean, manifest.std)


def _decoded_images(tiny_data):
    """The training images exactly as FFCV decodes them (libjpeg-turbo), by FFCV's own simple decoder."""
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    path = load_manifest(tiny_data).ffcv_path("train")
    loader = Loader(str(path), batch_size=64, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": None})
    return np.concatenate([b[0].copy() for b in loader])


def test_views_match_torchvision_with_the_drawn_parameters(tiny_data, debug_loader):
    """End to end: each output view against torchvision applied to the same decoded image with the
    parameters the loader drew. Mean abs error per view in std units: from the full decode, within
    0.02 (the crop is rounded to uint8; measured <= 0.008). Crops >= 2 res come from a 1/2-scale DCT
    decode: within 0.35 (median 0.12; measured up to 0.30): tiny_data's 5-6 px stripes and checks
    are above the Nyquist limit at 16 px, where two antialiasing filters disagree most (smooth,
    photo-like images: next test)."""
    manifest = load_manifest(tiny_data)
    images = _decoded_images(tiny_data)
    batch = _epoch(debug_loader, 3)[0]
    q, k = batch.views
    pairs = [batch.draws_of(j) for j in range(len(batch.indices))]
    errs = []
    for j, (i, pair) in enumerate(zip(batch.indices.tolist(), pairs)):
        for view, d in zip((q[j], k[j]), pair):
            ref = _reference_view(images[i], d, AugPolicy(), manifest, DEBUG_RES)
            errs.append((view - ref).abs().mean().item())
    scaled = [K.decode_denominator(min(d["crop"][2:]), DEBUG_RES) > 1 for pair in pairs for d in pair]
    assert any(scaled) and not all(scaled)  # both decode paths were exercised
    full = [e for e, s in zip(errs, scaled) if not s]
    reduced = [e for e, s in zip(errs, scaled) if s]
    assert np.median(full) < 0.01 and max(full) < 0.02, full  # uint8 rounding of the crop only
    assert np.median(reduced) < 0.12 and max(reduced) < 0.35, reduced


def test_reduced_decode_matches_full_decode_resize_on_a_smooth_image():
    """The decoder's 1/2-scale path (libjpeg-turbo DCT scaling, then the antialiased resize) against
    torchvision's antialiased resize of the full decode: within 1.2 levels of 255 on average, 6 at most."""
    import cv2

    img = _image(96, 96)
    img = cv2.GaussianBlur(img, (0, 0), 1.5)  # photo-like: no energy near the pixel Nyquist limit
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    jpg = jpg.reshape(-1)
    dec = ffcv_ops.decode_jpeg  # the decoder's own libffcv call
    full = np.zeros(96 * 96 * 3, np.uint8)
    dec(jpg, full, 96, 96, 1)
    half = np.zeros(48 * 48 * 3, np.uint8)
    assert K.decode_denominator(96, 24) == 4 and K.decode_denominator(60, 24) == 2
    dec(jpg, half, 96, 96, 2)
    box = (6, 10, 60, 80)  # top, left, h, w in the full image
    t, l, h, w = K.scale_box(*box, 2, 48, 48)
    out = np.zeros((24, 24, 3), np.uint8)
    K.resize_crop_aa(half.reshape(48, 48, 3), t, l, h, w, out, np.empty(48 * 48 * 3 + 24 * 3, np.float32))
    ref = F.resized_crop(torch.from_numpy(full.reshape(96, 96, 3)).permute(2, 0, 1).float(), *box, [24, 24],
                         antialias=True).permute(1, 2, 0)
    err = (torch.from_numpy(out).float() - ref).abs()
    assert err.mean() < 1.2 and err.max() < 6, (err.mean(), err.max())  # measured 0.8 / 3.8


def test_same_seed_repeats_other_seed_and_epoch_differ(tiny_data, debug_loader):
    first, again = _epoch(debug_loader, 0), _epoch(debug_loader, 0)
    assert all(torch.equal(a.views[0], b.views[0]) and torch.equal(a.views[1], b.views[1])
               for a, b in zip(first, again))
    later = _epoch(debug_loader, 1)
    assert not torch.equal(torch.cat([b.indices for b in first]), torch.cat([b.indices for b in later]))  # reshuffled
    other = ssl_loader(tiny_data, "ffcv", seed=1, channels_last=True)  # through the public interface
    other.set_epoch(0)
    batches = [(q.clone(), k.clone()) for q, k in other]
    for q, k in batches:
        check_ssl_batch(q, k, load_manifest(tiny_data), batch_size=8, res=32, channels_last=True)
    assert not any(torch.equal(a.views[0], b[0]) for a, b in zip(first, batches))


def test_batch_slots_allocated_once_and_an_abandoned_epoch_leaves_the_next_intact(tiny_data):
    """FFCV's per-epoch buffers are allocated once per loader: consecutive epochs, however iterated
    (Composer's islice stops at the last batch), reuse them; an abandoned epoch or one started ahead
    and not wanted (whose thread may still be writing) makes the next epoch allocate anew, and no
    epoch's views change either way."""
    loader = _ssl(tiny_data, res=DEBUG_RES, workers=2)
    memory = compat.batch_memory(loader._loader)
    first = _epoch(loader, 1)
    slots = memory.memory
    assert slots is not None
    loader.set_epoch(2)
    [tuple(x.clone() for x in b) for b in itertools.islice(loader, len(loader))]
    assert memory.memory is slots  # a complete epoch: the same buffers serve the next one
    again = _epoch(loader, 1)  # not the epoch started ahead (3): that one is dropped
    loader.set_epoch(0)
    abandoned = iter(loader)
    next(abandoned)
    abandoned.close()
    assert memory.memory is None
    after = _epoch(loader, 1)
    assert len(first) == len(again) == len(after) == 4
    for a, b, c in zip(first, again, after):
        assert all(torch.equal(a[i], other[i]) for other in (b, c) for i in (0, 1))


def test_each_draw_waits_for_the_previous_batch_copies(tiny_data):
    """Copies to the device out of a slot must be done before the next draw lets FFCV's thread refill
    it: compat.batches waits before every draw and when it stops (a recording stand-in for the copies)."""
    loader = _ssl(tiny_data, res=DEBUG_RES)
    events = []

    class Recorder:
        def wait(self):
            events.append("wait")

    for _ in compat.batches(loader._loader, Recorder().wait):
        events.append("batch")
    assert events == ["wait", "batch"] * 4 + ["wait", "wait"]


@pytest.mark.gpu
def test_cuda_batches_survive_a_device_that_lags_behind(tiny_data):
    """The device runs behind the host (a long kernel queued before each next copy): batches kept on
    the device equal those of a run that synchronises after every batch."""
    loader = _ssl(tiny_data, device=torch.device("cuda"), res=DEBUG_RES)
    loader.set_epoch(3)
    reference = []
    for q, k in loader:
        torch.cuda.synchronize()
        reference.append((q.clone(), k.clone()))
    loader.set_epoch(3)
    kept = []
    for q, k in loader:
        kept.append((q, k))
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time ahead of the next batch's copies
    torch.cuda.synchronize()
    assert len(kept) == len(reference) == 4
    for (q, k), (rq, rk) in zip(kept, reference):
        assert torch.equal(q, rq) and torch.equal(k, rk)


def test_ranks_disjoint_and_cover(tiny_data):
    """Two ranks; their loaders also take the CUDA path's layout (uint8 views normalised in torch)."""
    manifest = load_manifest(tiny_data)
    ranks = []
    for rank in range(2):
        loader = fb.FFCVAugLoader(manifest, split="train", res=32, batch_size=6, policy=AugPolicy(), workers=1,
                                  device=torch.device("cpu"), seed=4, rank=rank, world_size=2, drop_last=False,
                                  channels_last=False, layout=K.OUT_U8, debug=True)
        assert loader.num_samples == 18 and len(loader) == 3
        batches = _epoch(loader, 2)
        for b in batches:
            check_ssl_batch(*b.views, manifest, batch_size=len(b.indices), res=32)
        ranks.append([i for b in batches for i in b.indices.tolist()])
    check_partition(ranks, list(range(36)), exact=True)


@pytest.mark.gpu
def test_cuda_views_are_normalised_on_the_device(tiny_data):
    manifest = load_manifest(tiny_data)
    for channels_last in (False, True):
        loader = _ssl(tiny_data, device=torch.device("cuda"), channels_last=channels_last)
        assert loader.layout == K.OUT_U8
        for q, k in loader:
            check_ssl_batch(q, k, manifest, batch_size=8, res=32, channels_last=channels_last, device="cuda")


def test_eval_loader(tiny_data):
    manifest = load_manifest(tiny_data)
    loader = fb.build_eval_loader(manifest, split="val", res=32, batch_size=5, workers=1, device=torch.device("cpu"),
                                  rank=0, world_size=1, channels_last=True)
    assert loader.backend == "ffcv" and len(loader) == 3 and loader.num_samples == 12
    batches = list(loader)
    for x, _ in batches[:-1]:
        check_images(x, manifest, n=5, res=32, channels_last=True)
    check_eval_labels(torch.cat([b[1] for b in batches]), manifest, "val")
    assert torch.equal(batches[0][0], next(iter(loader))[0])  # no randomness
    # the torch backend's eval images (PIL decode of the WebDataset copy, torchvision transforms):
    # the two JPEG decoders differ by a level or so (measured 0.024 std units on average)
    reference = torch.cat([x for x, _ in eval_loader(tiny_data, "torch", workers=0, batch_size=5)])
    check_eval_matches(torch.cat([x for x, _ in batches]), reference, 0.05)
    halves = [fb.build_eval_loader(manifest, split="val", res=32, batch_size=4, workers=1, device=torch.device("cpu"),
                                   rank=r, world_size=2, channels_last=False) for r in range(2)]
    check_eval_labels(torch.cat([y for h in halves for _, y in h]), manifest, "val")


def test_eval_labels_survive_buffer_reuse(tiny_data):
    """Batches kept past FFCV's reuse window (more batches than its BATCHES_AHEAD + 2 slots) keep their labels:
    the labels must be copies, not views of FFCV's recycled buffers."""
    manifest = load_manifest(tiny_data)
    loader = fb.build_eval_loader(manifest, split="val", res=32, batch_size=2, workers=1, device=torch.device("cpu"),
                                  rank=0, world_size=1, channels_last=False)
    assert len(loader) > fb.BATCHES_AHEAD + 1
    kept = torch.cat([y for _, y in list(loader)])
    reference = torch.cat([y for _, y in eval_loader(tiny_data, "torch", workers=0, batch_size=2)])
    assert torch.equal(kept, reference)


def test_bad_input_is_one_line_user_error(tiny_data, tmp_path):
    manifest = load_manifest(tiny_data)
    with pytest.raises(UserError, match="no split"):
        _ssl(tiny_data, split="unlabeled")
    with pytest.raises(UserError, match="fewer than batch_size"):
        _ssl(tiny_data, batch_size=64)
    manifest.raw["files"]["ffcv"]["train"] = "ffcv/missing.beton"
    with pytest.raises(UserError, match="missing FFCV file"):
        fb.build_ssl_loader(manifest, split="train", res=32, batch_size=8, policy=AugPolicy(), workers=1,
                            device=torch.device("cpu"), seed=0, rank=0, world_size=1, drop_last=True,
                            channels_last=False)


# ---------------------------------------------------------------- the labelled loader, joined splits

@pytest.fixture(scope="session")
def labelled_loader(tiny_data):
    return fb.build_labelled_loader(load_manifest(tiny_data), split="train", res=DEBUG_RES, batch_size=6, workers=1,
                                    device=torch.device("cpu"), seed=2, rank=0, world_size=1, channels_last=False,
                                    debug=True)


def test_labelled_views_match_torchvision_crop_and_flip(tiny_data, labelled_loader):
    """One view per sample, from the SSL pipeline's decoder and kernels with the labelled policy:
    each against torchvision (resized_crop of the whole decoded image + hflip) with the drawn
    parameters, at about the tolerances of test_views_match_torchvision_with_the_drawn_parameters;
    labels are the samples' (split_labels), the epoch order the torch backend's."""
    import fasthpt.data as data_api
    from fasthpt.data import common, torch_backend

    manifest = load_manifest(tiny_data)
    policy = common.labelled_policy()
    images = _decoded_images(tiny_data)
    labels = data_api.split_labels(tiny_data, "train")
    assert torch.equal(fb.ffcv_labels(manifest, "train"), labels)  # the .beton's labels are the shards'
    assert len(labelled_loader) == 6 and labelled_loader.num_samples == 36
    batches = _epoch(labelled_loader, 1)
    reference = torch_backend.build_labelled_loader(manifest, split="train", res=DEBUG_RES, batch_size=6, workers=0,
                                                    device=torch.device("cpu"), seed=2, rank=0, world_size=1,
                                                    channels_last=False, debug=True)
    reference.set_epoch(1)
    assert torch.equal(torch.cat([b.indices for b in batches]), torch.cat([b.indices for b in reference]))
    full, reduced = [], []
    for batch in batches:
        (x,), y, idx = batch.views, batch.labels, batch.indices
        check_images(x, manifest, n=6, res=DEBUG_RES)
        assert torch.equal(y, labels[idx])
        for j, (view, i) in enumerate(zip(x, idx.tolist())):
            (d,) = batch.draws_of(j)
            assert not (d["jitter"] or d["gray"] or d["blur"])
            err = (view - _reference_view(images[i], d, policy, manifest, DEBUG_RES)).abs().mean().item()
            (reduced if K.decode_denominator(min(d["crop"][2:]), DEBUG_RES) > 1 else full).append(err)
    assert full and max(full) < 0.02, full
    # 1/2-scale DCT decodes (crops >= 2 res): tiny_data's fine patterns disagree most there (see the
    # test above); measured over several epochs: median 0.12 to 0.14, max 0.26
    assert not reduced or (np.median(reduced) < 0.2 and max(reduced) < 0.35), reduced


def test_labelled_draws_follow_the_policy():
    from fasthpt.data import common

    policy = common.labelled_policy()
    draws = _draws(policy, n=1500)
    check_policy_draws(draws, policy, SIDE, SIDE, res=32)  # crop areas at scale (0.08, 1); no colour, gray, blur


def test_train_plus_val_interleaves_one_loader_per_split(tiny_data):
    """split="train+val" on FFCV: one .beton per split, batches of both in one epoch, each split's
    samples once; the batch order changes with the epoch."""
    from fasthpt.data import common

    loader = fb.build_ssl_loader(load_manifest(tiny_data), split="train+val", res=DEBUG_RES, batch_size=4,
                                 policy=AugPolicy.preset("crop-only"), workers=1, device=torch.device("cpu"), seed=0,
                                 rank=0, world_size=1, drop_last=True, channels_last=False, debug=True)
    assert isinstance(loader, common.InterleavedLoader) and len(loader) == 12 and loader.num_samples == 48
    parts = loader.parts
    assert parts[0].seed != parts[1].seed  # sample i of val is not augmented like sample i of train
    order = loader.order(0)
    assert sorted(order) == [0] * 9 + [1] * 3 and order != loader.order(1)
    batches = [b._replace(views=tuple(v.clone() for v in b.views)) for b in loader]
    assert len(batches) == 12
    for part, n in ((0, 36), (1, 12)):
        idx = torch.cat([b.indices for b, p in zip(batches, order) if p == part])
        assert sorted(idx.tolist()) == list(range(n))
