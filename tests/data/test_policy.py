"""AugPolicy's blur-kernel cap: the one bound every backend's blur kernel meets."""

from __future__ import annotations

import math

import pytest

from fasthpt.data.policy import AugPolicy


@pytest.mark.parametrize("frac", [0.01, 0.1, 0.5, 1.0])
def test_blur_kernel_cap_is_odd_about_frac_of_the_side_and_bounds_every_kernel(frac):
    policy = AugPolicy(blur_kernel_frac=frac)
    for res in (1, 8, 31, 64, 224, 513):
        cap = policy.blur_kernel_cap(res)
        assert cap % 2 == 1 and cap >= 3 and abs(cap - max(3, frac * res)) <= 1.5, (res, cap)
        sizes = [policy.blur_kernel_size(res, sigma) for sigma in (0.1, 1.0, 5.0, float(res), 1e9)]
        assert max(sizes) == cap and all(s <= cap for s in sizes)
        # below the cap the kernel is sized by sigma: radius ceil(3 sigma)
        small = 2 * math.ceil(3 * 0.1) + 1
        assert policy.blur_kernel_size(res, 0.1) == min(small, cap)


# The authors' ablation pipelines, step by step (cjrd/self-supervised-pretraining,
# OpenSelfSup/configs/hpt-pretrain/bdd_*/base-bdd_*-config.py): which of jitter, gray, blur, flip each has.
AUTHORS_ABLATIONS = {
    "crop-only": (False, False, False, False),  # bdd_crop_only: RandomResizedCrop only
    "crop-blur": (False, False, True, False),  # bdd_crop_blur: RandomResizedCrop + GaussianBlur p 0.5
    "no-color": (False, True, True, True),  # bdd_rm_color: no ColorJitter, gray, blur and flip kept
    "no-gray": (True, False, True, True),  # bdd_rm_gray: no RandomGrayscale
}


@pytest.mark.parametrize("name", sorted(AUTHORS_ABLATIONS))
def test_ablation_presets_have_the_authors_steps(name):
    policy = AugPolicy.preset(name)
    steps = (policy.jitter_p > 0, policy.gray_p > 0, policy.blur_p > 0, policy.flip_p > 0)
    assert steps == AUTHORS_ABLATIONS[name]
    assert policy.flip_p in (0.0, 0.5) and policy.crop_scale == [0.2, 1.0]  # RandomHorizontalFlip's p, MoCo's crop
