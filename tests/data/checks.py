"""Backend-generic checks for loader tests: every backend's test file calls these.

For the ffcv backend (tests/data/test_ffcv_backend.py) reuse, with ``backend="ffcv"``:
- ``ssl_loader(data, backend, **kw)`` / ``eval_loader(...)``: build through the public interface
  with small test defaults (res 32, batch 8, CPU, workers 0 or 1).
- ``check_ssl_batch(q, k, manifest, batch_size=, res=, channels_last=)``: shape, dtype, device,
  memory format, finite, inside the normalised 0..255 range, the two views differ per sample.
- ``check_epoch(loader, drop_last=)``: batch count == len(loader), samples == num_samples (plain
  or debug batches).
- ``check_repeatable(make)``: ``make(seed)`` twice -> identical first epoch; another seed or
  ``set_epoch(1)`` -> different.
- ``check_partition(keys_per_rank, all_keys, exact=)``: ranks disjoint; together all keys (eval),
  or world_size * (N // world_size) of them (SSL).
- ``check_eval_labels(labels, manifest, split)``: every sample once: label histogram == per_class.
- ``check_eval_matches(images, reference, tol)``: eval images close to the torch reference.
- ``check_fraction(flags, p, name)``: a Bernoulli(p) frequency within 4.5 standard errors.
- ``check_crop_areas(area_fracs, policy, width, height)``: the crop-area distribution agrees with
  torchvision's RandomResizedCrop.get_params (two-sample Kolmogorov-Smirnov, alpha ~1e-3).
- ``check_policy_draws(draws, policy, width, height, res)``: all of the above for a dict of draws:
  jitter, gray, blur, flip (bool arrays), sigma, brightness..hue (floats), area (crop area fraction).
- ``draw_stats(view_draws, width, height)``: that dict from the draws of debug batches
  (common.DebugBatch.draws of any backend, any number of views and batches).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

import fasthpt.data as data_api
from fasthpt.data.common import DebugBatch
from fasthpt.data.policy import AugPolicy


def ssl_loader(data, backend, **kw):
    opts = dict(res=32, batch_size=8, workers=1, device="cpu", seed=0, rank=0, world_size=1)
    opts.update(kw)
    return data_api.build_ssl_loader(data, backend=backend, **opts)


def eval_loader(data, backend, **kw):
    opts = dict(res=32, batch_size=8, workers=1, device="cpu", rank=0, world_size=1)
    opts.update(kw)
    return data_api.build_eval_loader(data, backend=backend, **opts)


def _normalised_bounds(manifest):
    mean, std = torch.tensor(manifest.mean), torch.tensor(manifest.std)
    return ((0 - mean) / std).view(1, 3, 1, 1), ((255 - mean) / std).view(1, 3, 1, 1)


def check_images(x, manifest, *, n, res, channels_last=False, device="cpu"):
    assert x.shape == (n, 3, res, res), x.shape
    assert x.dtype == torch.float32
    assert x.device.type == torch.device(device).type
    if channels_last:
        assert x.is_contiguous(memory_format=torch.channels_last)
    else:
        assert x.is_contiguous()
    assert torch.isfinite(x).all()
    low, high = _normalised_bounds(manifest)
    eps = 1e-3
    assert (x.cpu() >= low - eps).all() and (x.cpu() <= high + eps).all(), "outside the normalised 0..255 range"
    # normalised with this dataset's statistics: per-channel means are O(1), not O(100)
    assert x.mean().abs() < 3 and 0.05 < x.std() < 5


def check_ssl_batch(q, k, manifest, *, batch_size, res, channels_last=False, device="cpu"):
    for view in (q, k):
        check_images(view, manifest, n=batch_size, res=res, channels_last=channels_last, device=device)
    per_sample = (q - k).abs().flatten(1).mean(1)
    assert (per_sample > 1e-3).all(), "two views of a sample are identical"


def check_epoch(loader, *, drop_last, batch_size):
    """Iterate one epoch; returns its batches."""
    batches = list(loader)
    assert len(batches) == len(loader)
    sizes = [(b.views if isinstance(b, DebugBatch) else b)[0].shape[0] for b in batches]
    assert sum(sizes) == (len(loader) * batch_size if drop_last else loader.num_samples)
    assert all(s == batch_size for s in sizes[:-1])
    return batches


def check_repeatable(make):
    """make(seed) -> a fresh SSL loader."""
    first = [b[0] for b in make(0)]
    again = [b[0] for b in make(0)]
    assert len(first) == len(again) and all(torch.equal(a, b) for a, b in zip(first, again)), "same seed differs"
    other = [b[0] for b in make(1)]
    assert not all(torch.equal(a, b) for a, b in zip(first, other)), "another seed gives the same epoch"
    loader = make(0)
    loader.set_epoch(1)
    next_epoch = [b[0] for b in loader]
    assert not all(torch.equal(a, b) for a, b in zip(first, next_epoch)), "set_epoch does not reshuffle"


def check_partition(keys_per_rank, all_keys, *, exact: bool):
    seen = set()
    for keys in keys_per_rank:
        assert len(keys) == len(set(keys)), "a sample repeats within a rank"
        assert not seen & set(keys), "ranks share samples"
        seen |= set(keys)
    assert seen <= set(all_keys)
    world = len(keys_per_rank)
    expected = len(all_keys) if exact else world * (len(all_keys) // world)
    assert len(seen) == expected, (len(seen), expected)


def check_eval_labels(labels, manifest, split):
    labels = torch.as_tensor(labels)
    assert labels.dtype == torch.int64
    counts = torch.bincount(labels, minlength=manifest.num_classes).tolist()
    assert counts == manifest.raw["splits"][split]["per_class"]


def check_eval_matches(images, reference, tol):
    """Mean absolute difference, in normalised units (1 unit ~ one std of the data)."""
    assert images.shape == reference.shape
    err = (images.float().cpu() - reference.float().cpu()).abs().mean().item()
    assert err < tol, f"eval images differ from the reference by {err:.4f} (tolerance {tol})"


def check_fraction(flags, p, name, z=4.5):
    flags = np.asarray(flags, dtype=bool).ravel()
    n = flags.size
    se = math.sqrt(max(p * (1 - p), 1e-12) / n)
    assert abs(flags.mean() - p) <= z * se + 1e-9, f"{name}: frequency {flags.mean():.3f}, policy {p} (n={n})"


def reference_crop_areas(policy: AugPolicy, width, height, n=4000, seed=0):
    """Crop-area fractions drawn by torchvision's RandomResizedCrop.get_params on a same-size image."""
    probe = Image.new("L", (width, height))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        boxes = [T_get_params(probe, policy) for _ in range(n)]
    return np.array([h * w / (width * height) for _, _, h, w in boxes])


def T_get_params(probe, policy):
    import torchvision.transforms as T

    return T.RandomResizedCrop.get_params(probe, list(policy.crop_scale), list(policy.crop_ratio))


def ks_statistic(a, b):
    a, b = np.sort(np.asarray(a)), np.sort(np.asarray(b))
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size).max()


def check_crop_areas(area_fracs, policy, width, height):
    area_fracs = np.asarray(area_fracs)
    low, high = policy.crop_scale
    # integer box sides make the realised fraction drift slightly outside [low, high]
    assert area_fracs.min() >= low * 0.8 and area_fracs.max() <= 1.0 + 1e-6, (
        f"crop areas outside the policy's scale {policy.crop_scale}: {area_fracs.min():.3f}..{area_fracs.max():.3f}")
    ref = reference_crop_areas(policy, width, height)
    n, m = area_fracs.size, ref.size
    critical = 1.95 * math.sqrt((n + m) / (n * m))  # two-sample KS at alpha = 0.001
    d = ks_statistic(area_fracs, ref)
    assert d < critical, f"crop areas: KS {d:.3f} >= {critical:.3f} (mean {area_fracs.mean():.3f} vs {ref.mean():.3f})"


def check_uniform(values, low, high, name):
    values = np.asarray(values, dtype=float).ravel()
    assert values.min() >= low - 1e-5 and values.max() <= high + 1e-5, name
    sd = (high - low) / math.sqrt(12)
    assert abs(values.mean() - (low + high) / 2) <= 4.5 * sd / math.sqrt(values.size) + 1e-9, name


def check_policy_draws(draws: dict, policy: AugPolicy, width, height, res):
    check_fraction(draws["jitter"], policy.jitter_p if policy.uses_color else 0.0, "jitter")
    check_fraction(draws["gray"], policy.gray_p, "gray")
    check_fraction(draws["blur"], policy.blur_p, "blur")
    check_fraction(draws["flip"], policy.flip_p, "flip")
    check_uniform(draws["sigma"], *policy.sigma_range(res), "sigma")  # scaled to the view side
    for name in ("brightness", "contrast", "saturation"):
        v = getattr(policy, name)
        check_uniform(draws[name], max(0.0, 1 - v), 1 + v, name)
    check_uniform(draws["hue"], -policy.hue, policy.hue, "hue")
    check_crop_areas(draws["area"], policy, width, height)


def draw_stats(view_draws: list[dict], width, height) -> dict:
    """DebugBatch.draws dicts (one per view and batch) -> the arrays check_policy_draws reads (and
    the jitter op orders, where the backend draws them)."""
    cat = {k: torch.cat([d[k] for d in view_draws]).numpy() for k in view_draws[0]}
    out = {k: cat[k] for k in ("jitter", "gray", "blur", "flip", "sigma")}
    for i, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        out[name] = cat["factors"][:, i]
    out["area"] = cat["crop"][:, 2] * cat["crop"][:, 3] / (width * height)
    if "order" in cat:
        out["order"] = cat["order"]
    return out
