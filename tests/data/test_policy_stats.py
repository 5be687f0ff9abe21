"""Over many samples, each backend's random draws follow the AugPolicy (read from the draws the
loaders export in debug mode): crop-area distribution, jitter / gray / blur / flip frequencies,
sigma and jitter factor ranges -- for the default policy and the paper's ablation presets."""

from __future__ import annotations

import pytest
import torch
from checks import check_crop_areas, check_policy_draws, draw_stats

from fasthpt.data import torch_backend as tb
from fasthpt.data.policy import AugPolicy
from fasthpt.manifest import load_manifest

SIDE = 48  # the tiny dataset's images are 48 x 48
EPOCHS = 12  # 36 images x 2 views x 12 epochs = 864 draws per quantity


def _loader(module, tiny_data, policy, **kw):
    return module.build_ssl_loader(load_manifest(tiny_data), split="train", res=8, batch_size=36, policy=policy,
                                   workers=kw.pop("workers", 1), device=torch.device("cpu"), seed=5, rank=0,
                                   world_size=1, drop_last=False, channels_last=False, debug=True)


def _draws(module, tiny_data, policy, workers=1):
    """Every view's draws over EPOCHS epochs of the loader's debug batches (checks.draw_stats)."""
    loader = _loader(module, tiny_data, policy, workers=workers)
    views = []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        views += [d for batch in loader for d in batch.draws]
    return draw_stats(views, SIDE, SIDE)


def torch_draws(tiny_data, policy):
    draws = _draws(tb, tiny_data, policy, workers=0)
    # ColorJitter's op order is a uniform permutation
    assert len({tuple(o) for o in draws["order"].tolist()}) > 12
    return draws


def dali_draws(tiny_data, policy):
    from fasthpt.data import dali_backend as db

    return _draws(db, tiny_data, policy)


POLICIES = {name: AugPolicy.preset(name) for name in ("mocov2", "crop-blur", "no-color")}


@pytest.mark.parametrize("preset", sorted(POLICIES))
def test_torch_draws_follow_policy(tiny_data, preset):
    check_policy_draws(torch_draws(tiny_data, POLICIES[preset]), POLICIES[preset], SIDE, SIDE, res=8)


@pytest.mark.parametrize("preset", sorted(POLICIES))
def test_dali_draws_follow_policy(tiny_data, preset):
    pytest.importorskip("nvidia.dali")
    check_policy_draws(dali_draws(tiny_data, POLICIES[preset]), POLICIES[preset], SIDE, SIDE, res=8)


def test_checks_catch_a_wrong_policy(tiny_data):
    """The statistics are sharp enough to notice a backend that ignores a probability."""
    draws = torch_draws(tiny_data, AugPolicy(gray_p=0.5))
    with pytest.raises(AssertionError, match="gray"):
        check_policy_draws(draws, AugPolicy(), SIDE, SIDE, res=8)
    # areas drawn from scale (0.3, 1) stay inside the bounds of (0.2, 1): only the distribution test sees it
    narrow = torch_draws(tiny_data, AugPolicy(crop_scale=[0.3, 1.0]))
    with pytest.raises(AssertionError, match="crop areas: KS"):
        check_crop_areas(narrow["area"], AugPolicy(), SIDE, SIDE)
