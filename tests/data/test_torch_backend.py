"""torch backend: its fixed-parameter ops are torchvision's transforms, and the loader contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from checks import (
    check_epoch, check_eval_labels, check_partition, check_repeatable, check_ssl_batch, eval_loader, ssl_loader,
)
from fasthpt.data import torch_backend as tb
from fasthpt.data.manifest import load_manifest
from fasthpt.data.policy import AugPolicy

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
    assert loader.backend == "torch" and loader.num_samples == 36 and len(loader) == 4
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
    return [int(i) for batch in loader for i in batch[3]], len(loader)


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
