"""Rasters (N bands, 12/16-bit or float) through the three loaders: each backend's views against the
reference of fasthpt.data.spectral with the draws the backend reports, the evaluation view, the
draws against the raster policy, layout and standardisation, on a small generated 5-band uint16
dataset of non-square images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checks import check_fraction, check_uniform, draw_stats

import fasthpt.data as data_api
from fasthpt.data import spectral
from fasthpt.data.policy import AugPolicy
from fasthpt.manifest import load_manifest

BANDS, CLASSES, PER_CLASS, RES = 5, 3, 10, 12


def _raster(label: int, i: int, rng) -> np.ndarray:
    """A 12-bit scene: per-band levels by class, a stripe pattern, noise; non-square sizes."""
    h, w = (20, 26) if i % 2 else (24, 18)
    yy, xx = np.mgrid[0:h, 0:w]
    levels = 300 + 500 * np.arange(BANDS) + 400 * label
    pattern = 200 * np.sin(xx / (2 + label) + yy / 5.0)
    img = levels[None, None, :] + pattern[..., None] + rng.normal(0, 30, (h, w, BANDS))
    return np.clip(img, 0, 4095).astype(np.uint16)


@pytest.fixture(scope="module")
def raster_data(tmp_path_factory):
    from dataprep import prepare

    src = tmp_path_factory.mktemp("raster_src")
    rng = np.random.default_rng(0)
    for label in range(CLASSES):
        folder = src / f"class{label}"
        folder.mkdir()
        for i in range(PER_CLASS):
            np.save(folder / f"{i:02d}.npy", _raster(label, i, rng))
    return prepare("bands5", out=tmp_path_factory.mktemp("raster_data"), src=src, val_frac=0.2, test_frac=0.2,
                   workers=1, progress=False)


def _available(backend):
    reason = data_api.available_backends()[backend]
    if reason:
        pytest.skip(reason)


def _debug_loader(data, backend, channels_last=False, **kw):
    import importlib

    _available(backend)
    module = importlib.import_module(f"fasthpt.data.{backend}_backend")
    opts = dict(split="train", res=RES, batch_size=6, policy=AugPolicy(blur_p=0.7), workers=1,
                device=torch.device("cpu"), seed=2, rank=0, world_size=1, drop_last=True,
                channels_last=channels_last, debug=True)
    opts.update(kw)
    return module.build_ssl_loader(load_manifest(data), **opts)


def _reference(manifest, index, d, j, policy):
    """The spectral reference of view j of a debug batch, standardised."""
    from fasthpt.data import torch_backend as tb

    bands = spectral.bands_of(manifest)
    x = tb._WdsImages(manifest, "train", RES, None, 0)._image(index)
    out = spectral.view(x, tuple(d["crop"][j].tolist()), bool(d["jitter"][j]), float(d["factors"][j, 0]),
                        float(d["factors"][j, 1]), bool(d["blur"][j]), float(d["sigma"][j]), bool(d["flip"][j]), RES,
                        bands, policy.blur_kernel_cap(RES))
    return spectral.standardise(out, bands)


# Tolerances in standardised units (1 = one standard deviation of a band). FFCV computes the
# reference's operations in float32 (its blur kernel is sized by sigma, the reference's is the
# policy's widest: a tail below 1e-3). DALI's resize filter differs from torchvision's by a few
# 0.1% of a band's range on average, more at sharp edges (measured: mean 0.003, worst 0.37).
TOLERANCE = {"torch": (1e-5, 1e-4), "ffcv": (1e-3, 1e-2), "dali": (0.02, 0.6)}


@pytest.mark.parametrize("backend", ["torch", "ffcv", "dali"])
def test_views_match_the_spectral_reference(raster_data, backend):
    manifest = load_manifest(raster_data)
    loader = _debug_loader(raster_data, backend)
    policy = spectral.spectral_policy(AugPolicy(blur_p=0.7))
    errors, drawn = [], {"jitter": 0, "blur": 0, "flip": 0}
    for batch in loader:
        for x, d in zip(batch.views, batch.draws):
            assert x.shape == (6, BANDS, RES, RES) and x.dtype == torch.float32 and torch.isfinite(x).all()
            for j, i in enumerate(batch.indices.tolist()):
                err = (x[j] - _reference(manifest, i, d, j, policy)).abs()
                errors.append((err.mean().item(), err.max().item()))
                for k in drawn:
                    drawn[k] += bool(d[k][j])
    assert all(v > 0 for v in drawn.values()), drawn  # every operation was exercised
    mean_tol, max_tol = TOLERANCE[backend]
    errors = np.array(errors)
    assert errors[:, 0].mean() < mean_tol and errors[:, 1].max() < max_tol, (errors[:, 0].mean(), errors[:, 1].max())


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_ffcv_and_dali_draw_the_same_and_follow_the_raster_policy(raster_data, backend):
    """No saturation, hue or grayscale on rasters; the other draws as the policy says; the two
    counter-based backends draw the same for each sample."""
    views = []
    loader = _debug_loader(raster_data, backend, batch_size=3)
    for epoch in range(40):
        loader.set_epoch(epoch)
        for batch in loader:
            views += list(batch.draws)
            assert not any(d["gray"].any() for d in batch.draws)
            assert all((d["factors"][:, 2] == 1).all() and (d["factors"][:, 3] == 0).all() for d in batch.draws)
    policy = spectral.spectral_policy(AugPolicy(blur_p=0.7))
    stats = draw_stats(views, 1, 1)
    check_fraction(stats["jitter"], policy.jitter_p, "jitter")
    check_fraction(stats["blur"], policy.blur_p, "blur")
    check_fraction(stats["flip"], policy.flip_p, "flip")
    for name in ("brightness", "contrast"):
        check_uniform(stats[name], 1 - getattr(policy, name), 1 + getattr(policy, name), name)
    check_uniform(stats["sigma"], *policy.sigma_range(RES), "sigma")
    other = _debug_loader(raster_data, "dali" if backend == "ffcv" else "ffcv", batch_size=3)
    other.set_epoch(3)
    loader.set_epoch(3)
    for a, b in zip(loader, other):
        assert torch.equal(a.indices, b.indices)
        for da, db in zip(a.draws, b.draws):
            assert torch.equal(da["crop"], db["crop"]) and torch.equal(da["flip"], db["flip"])


@pytest.mark.parametrize("backend", ["torch", "ffcv", "dali"])
def test_eval_views_are_the_reference_resize_and_centre_crop(raster_data, backend):
    _available(backend)
    manifest = load_manifest(raster_data)
    bands = spectral.bands_of(manifest)
    from fasthpt.data import torch_backend as tb

    images = tb._WdsImages(manifest, "val", RES, None, 0)
    loader = data_api.build_eval_loader(raster_data, backend=backend, split="val", res=RES, batch_size=4, workers=1,
                                        device="cpu", channels_last=True)
    x = torch.cat([b[0] for b in loader])
    labels = torch.cat([b[1] for b in loader])
    assert x.shape == (len(images), BANDS, RES, RES) and x.is_contiguous(memory_format=torch.channels_last)
    ref = torch.stack([spectral.standardise(spectral.eval_view(images._image(i), RES, round(RES * 256 / 224)), bands)
                       for i in range(len(images))])
    assert (x - ref).abs().max() < 1e-3
    assert torch.equal(labels, data_api.split_labels(raster_data, "val"))


@pytest.mark.parametrize("backend", ["torch", "ffcv", "dali"])
def test_ssl_batches_are_standardised_band_by_band(raster_data, backend):
    _available(backend)
    loader = data_api.build_ssl_loader(raster_data, backend=backend, res=RES, batch_size=6, workers=1, device="cpu",
                                       channels_last=True, policy="crop-only")
    q, k = next(iter(loader))
    assert q.shape == k.shape == (6, BANDS, RES, RES) and q.is_contiguous(memory_format=torch.channels_last)
    per_band = q.mean(dim=(0, 2, 3))
    assert per_band.abs().max() < 1.5 and 0.1 < q.std() < 3  # standardised per band, not in stored units
    assert (q - k).abs().flatten(1).mean(1).min() > 1e-4  # two different views


def test_jitter_clamps_to_each_bands_range():
    bands = spectral.Bands(2, "uint16", np.array([0, 100], np.float32), np.array([50, 200], np.float32),
                           np.zeros(2, np.float32), np.ones(2, np.float32))
    x = torch.stack([torch.full((4, 4), 40.0), torch.linspace(120, 180, 16).view(4, 4)])
    out = spectral.jitter(x, 1.4, 1.0, torch.from_numpy(bands.lo), torch.from_numpy(bands.hi))
    assert (out[0] == 50).all() and out[1].max() == 200 and out[1].min() >= 100
    flat = spectral.jitter(x, 1.0, 0.0, torch.from_numpy(bands.lo), torch.from_numpy(bands.hi))  # contrast 0
    assert torch.allclose(flat[1], torch.full((4, 4), 150.0))


def test_spectral_policy_turns_off_colour_ops_only():
    p = spectral.spectral_policy(AugPolicy())
    assert p.saturation == p.hue == p.gray_p == 0 and p.brightness == p.contrast == 0.4 and p.uses_color
    assert p.blur_p == AugPolicy().blur_p and p.flip_p == AugPolicy().flip_p


def test_dali_raster_gpu_graphs_define_without_a_gpu(raster_data):
    pytest.importorskip("nvidia.dali")
    from fasthpt.data import dali_backend as db

    manifest = load_manifest(raster_data)
    bands = spectral.bands_of(manifest)
    kw = dict(batch_size=4, num_threads=1, device_id=0, seed=1, prefetch_queue_depth=2, exec_dynamic=True)
    policy = spectral.spectral_policy(AugPolicy())
    assert db._views_pipeline(manifest, lambda info: None, policy, RES, True, True, 2, bands, **kw) is not None
    assert db._eval_pipeline(manifest, lambda info: None, RES, True, False, bands, **kw) is not None


def test_the_demos_random_init_reference_takes_the_datas_bands(raster_data, tmp_path):
    """The demo's random-init row on N-band data is a random N-band conv1, not a random RGB one
    adapted (whose bands would share filters)."""
    from types import SimpleNamespace

    from fasthpt.experiment.run import Experiment

    fake = SimpleNamespace(out=tmp_path, target=raster_data,
                           cfg=SimpleNamespace(pretrain=SimpleNamespace(arch="resnet_micro")))
    path = Experiment._random(fake)
    conv1 = torch.load(path, weights_only=True)["conv1.weight"]
    assert conv1.shape[1] == BANDS
    assert not torch.allclose(conv1[:, 3], conv1[:, 4])  # its own filters per band
