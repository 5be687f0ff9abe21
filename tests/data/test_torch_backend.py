"""torch backend: its fixed-parameter ops are torchvision's transforms, and the loader contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from checks import (
    check_epoch,
    check_eval_labels,
    check_images,
    check_partition,
    check_repeatable,
    check_ssl_batch,
    eval_loader,
    ssl_loader,
)
from PIL import Image

from fasthpt.data import torch_backend as tb
from fasthpt.data.policy import AugPolicy
from fasthpt.manifest import load_manifest

RNG = np.random.default_rng(0)
IMG = Image.fromarray(RNG.integers(0, 256, (40, 52, 3), dtype=np.uint8))


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_ops_are_the_torchvision_transforms():
    """Each op with fixed parameters equals the MoCo-v2 transform object forced to those parameters."""
    assert same(tb.op_crop(IMG, (3, 4, 20, 30), 16),
                T.Resize((16, 16), antialias=True)(IMG.crop((4, 3, 34, 23))))
    jitter = T.ColorJitter(brightness=(1.3, 1.3), contrast=(0.7, 0.7), saturation=(1.2, 1.2), hue=(0.1, 0.1))
    torch.manual_seed(0)
    order = tuple(T.ColorJitter.get_params(*[[1, 1]] * 3, [0, 0])[0].tolist())
    torch.manual_seed(0)
    assert same(tb.op_jitter(IMG, (1.3, 0.7, 1.2, 0.1), order), jitter(IMG))
    assert same(tb.op_gray(IMG), T.RandomGrayscale(p=1.0)(IMG))
    assert same(tb.op_blur(IMG, 1.5, 5), T.GaussianBlur(5, sigma=(1.5, 1.5))(IMG))
    assert same(tb.op_flip(IMG), T.RandomHorizontalFlip(p=1.0)(IMG))


def test_baseline_kernel_is_the_policy_cap():
    policy = AugPolicy()
    assert tb.moco_kernel(policy, 224) == 23  # 10% of 224 px, odd
    assert tb.moco_kernel(policy, 64) % 2 == 1
    for res in (8, 64, 224, 512):
        assert tb.moco_kernel(policy, res) == policy.blur_kernel_cap(res)


def test_apply_view_skips_what_was_not_drawn():
    params = tb.ViewParams((0, 0, 40, 52), False, (0, 1, 2, 3), (1.4, 1.4, 1.4, 0.3), False, False, 1.0, False)
    plain = tb.apply_view(IMG, params, AugPolicy(), 24)
    assert same(plain.permute(1, 2, 0).numpy(), tb.op_crop(IMG, (0, 0, 40, 52), 24))
    gray = tb.apply_view(IMG, tb.ViewParams(**{**params.__dict__, "gray": True}), AugPolicy(), 24)
    assert torch.equal(gray[0], gray[1]) and not torch.equal(plain[0], plain[1])


@pytest.mark.parametrize("channels_last", [False, True])
def test_ssl_batches(tiny_data, channels_last):
    manifest = load_manifest(tiny_data)
    loader = ssl_loader(tiny_data, "torch", workers=0, channels_last=channels_last)
    assert loader.backend == "torch" and loader.num_samples == 32 and len(loader) == 4
    for q, k in check_epoch(loader, drop_last=True, batch_size=8):
        check_ssl_batch(q, k, manifest, batch_size=8, res=32, channels_last=channels_last)


def test_epoch_length_without_drop_last(tiny_data):
    loader = ssl_loader(tiny_data, "torch", workers=0, batch_size=10, drop_last=False)
    assert len(loader) == 4
    check_epoch(loader, drop_last=False, batch_size=10)


def test_same_seed_repeats(tiny_data):
    check_repeatable(lambda seed: ssl_loader(tiny_data, "torch", workers=0, res=16, batch_size=12, seed=seed))


def test_workers_do_not_change_the_augmentation(tiny_data):
    # each sample is augmented under its own seed: 0 or 2 worker processes give the same batches
    a = [b[0] for b in ssl_loader(tiny_data, "torch", workers=0, res=16, batch_size=12)]
    b = [b[0] for b in ssl_loader(tiny_data, "torch", workers=2, res=16, batch_size=12)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _indices(tiny_data, rank, world_size, epoch=0):
    loader = tb.build_ssl_loader(load_manifest(tiny_data), split="train", res=16, batch_size=4, policy=AugPolicy(),
                                 workers=0, device=torch.device("cpu"), seed=1, rank=rank, world_size=world_size,
                                 drop_last=False, channels_last=False, debug=True)
    loader.set_epoch(epoch)
    return [int(i) for batch in loader for i in batch.indices], len(loader)


def test_ranks_disjoint_and_cover(tiny_data):
    for world in (2, 5):
        ranks = [_indices(tiny_data, r, world, epoch=1) for r in range(world)]
        assert len({n for _, n in ranks}) == 1  # same number of batches everywhere
        check_partition([k for k, _ in ranks], list(range(36)), exact=36 % world == 0)


def test_eval_loader(tiny_data):
    manifest = load_manifest(tiny_data)
    loader = eval_loader(tiny_data, "torch", workers=0, batch_size=5)
    assert len(loader) == 3 and loader.num_samples == 12
    batches = list(loader)
    check_eval_labels(torch.cat([b[1] for b in batches]), manifest, "val")
    assert batches[0][0].shape == (5, 3, 32, 32) and batches[-1][0].shape[0] == 2
    again = list(eval_loader(tiny_data, "torch", workers=0, batch_size=5))
    assert torch.equal(batches[0][0], again[0][0])  # no randomness in evaluation
    split = [torch.cat([b[1] for b in eval_loader(tiny_data, "torch", workers=0, rank=r, world_size=5)])
             for r in range(5)]
    check_eval_labels(torch.cat(split), manifest, "val")


# ---- the labelled loader (linear probe / fine-tuning train view) and joined splits ----

def _labelled(tiny_data, **kw):
    opts = dict(split="train", res=16, batch_size=6, workers=0, device=torch.device("cpu"), seed=2, rank=0,
                world_size=1, channels_last=False, debug=True)
    opts.update(kw)
    return tb.build_labelled_loader(load_manifest(tiny_data), **opts)


def test_labelled_views_are_torchvision_crop_and_flip_of_the_whole_image(tiny_data):
    """Each view equals torchvision's resized_crop (antialiased bilinear) + hflip of the whole decoded
    image with the drawn box; labels are the sample's; no colour, gray or blur is drawn."""
    manifest = load_manifest(tiny_data)
    loader = _labelled(tiny_data)
    assert len(loader) == 6 and loader.num_samples == 36
    images = tb._WdsImages(manifest, "train", 16, None, 0)
    mean, std = torch.tensor(manifest.mean).view(3, 1, 1), torch.tensor(manifest.std).view(3, 1, 1)
    labels = tb.common.wds_labels(manifest, "train")
    batch = next(iter(loader))
    (x,), y, idx = batch.views, batch.labels, batch.indices
    check_images(x, manifest, n=6, res=16)
    assert torch.equal(y, labels[idx])
    for j, (view, i) in enumerate(zip(x, idx.tolist())):
        (p,) = batch.draws_of(j)
        assert not (p["jitter"] or p["gray"] or p["blur"])
        top, left, h, w = p["crop"]
        ref = T.RandomResizedCrop(16, antialias=True)  # what MoCo's main_lincls applies to a PIL image
        ref = F.resized_crop(images._image(i), top, left, h, w, ref.size, ref.interpolation, antialias=True)
        ref = F.pil_to_tensor(F.hflip(ref) if p["flip"] else ref)
        assert torch.equal(torch.round(view * std + mean).to(torch.uint8), ref)


def test_labelled_draws_follow_torchvisions_random_resized_crop(tiny_data):
    """Crop areas against RandomResizedCrop.get_params at scale (0.08, 1) (KS test), flips at p 0.5,
    over several epochs; every epoch a permutation of the split."""
    from checks import check_crop_areas, check_fraction

    loader = _labelled(tiny_data, batch_size=12)
    policy = tb.common.labelled_policy()
    assert tuple(policy.crop_scale) == (0.08, 1.0)
    areas, flips = [], []
    for epoch in range(12):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert sorted(torch.cat([b.indices for b in batches]).tolist()) == list(range(36))
        for (d,) in (b.draws for b in batches):
            areas += (d["crop"][:, 2] * d["crop"][:, 3] / 48**2).tolist()
            flips += d["flip"].tolist()
    check_crop_areas(areas, policy, 48, 48)
    check_fraction(flips, 0.5, "flip")


def test_labelled_subset_and_labels_match_the_eval_loader(tiny_data):
    """Labels by sample index (split_labels) are the eval loader's, in its order; a subset loader
    draws only its samples, each once per epoch."""
    import fasthpt.data as data_api

    manifest = load_manifest(tiny_data)
    labels = data_api.split_labels(tiny_data, "train")
    eval_labels = torch.cat([b[1] for b in eval_loader(tiny_data, "torch", split="train", workers=0)])
    assert torch.equal(labels, eval_labels)
    check_eval_labels(labels, manifest, "train")
    subset = torch.tensor([3, 7, 8, 20, 21, 30, 35, 1])
    loader = _labelled(tiny_data, batch_size=4, indices=subset)
    batches = list(loader)
    assert len(batches) == 2 and sorted(torch.cat([b.indices for b in batches]).tolist()) == sorted(subset.tolist())
    assert all(torch.equal(b.labels, labels[b.indices]) for b in batches)


def test_train_plus_val_is_both_splits_as_one_epoch(tiny_data):
    """split="train+val": one permutation over both splits' samples (train first in the numbering)."""
    manifest = load_manifest(tiny_data)
    loader = tb.build_ssl_loader(manifest, split="train+val", res=16, batch_size=8, policy=AugPolicy(), workers=0,
                                 device=torch.device("cpu"), seed=0, rank=0, world_size=1, drop_last=False,
                                 channels_last=False, debug=True)
    assert loader.num_samples == 48 and len(loader) == 6
    seen = torch.cat([b.indices for b in loader])
    assert sorted(seen.tolist()) == list(range(48))
    positions = [p for p, i in enumerate(seen.tolist()) if i >= 36]  # the val samples spread through the epoch
    assert min(positions) < 24 < max(positions)
    joined = tb._WdsImages(manifest, "train+val", 16, None, 0)
    val = tb._WdsImages(manifest, "val", 16, None, 0)
    assert [s.key for s in joined.samples[36:]] == [s.key for s in val.samples]
