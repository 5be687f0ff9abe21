"""The vectorised draws (fasthpt.data.draws) against the `ffcv` backend's numba kernels: the same
keys give the same crops and flags exactly, and the same factors and sigma to rounding; and their
distributions follow the policy (checks.check_policy_draws, torchvision's crop areas)."""

from __future__ import annotations

import numpy as np
import pytest
from checks import check_policy_draws

from fasthpt.data import draws
from fasthpt.data.policy import AugPolicy

POLICIES = [AugPolicy(), AugPolicy.preset("crop-only"), AugPolicy(crop_scale=[0.9, 1.0], crop_ratio=[2.0, 3.0]),
            AugPolicy(brightness=0, contrast=0, saturation=0, hue=0)]


@pytest.mark.parametrize("policy", POLICIES, ids=["mocov2", "crop-only", "fallback-heavy", "zero-factors"])
def test_vectorised_draws_equal_the_ffcv_kernels(policy):
    K = pytest.importorskip("fasthpt.data.ffcv_kernels")
    ops = pytest.importorskip("fasthpt.data.ffcv_ops")
    rng = np.random.default_rng(0)
    n = 400
    samples = rng.integers(0, 10**6, n)
    heights, widths = rng.integers(8, 300, n), rng.integers(8, 300, n)
    got = draws.view_draws(7, 3, samples, heights, widths, policy, 32, views=2)
    cfg, _ = ops.policy_vector(policy, 32)
    ekey = np.uint64(K.epoch_key(7, 3))
    assert ekey == draws.epoch_key(7, 3)
    lr = np.log(policy.crop_ratio)
    for v in range(2):
        for i in range(n):
            key = np.uint64(K.view_key(ekey, int(samples[i]), v))
            crop = K.sample_crop(key, int(heights[i]), int(widths[i]), *policy.crop_scale, lr[0], lr[1])
            assert tuple(got[v]["crop"][i]) == crop, (v, i)
            p = np.empty(K.PARAMS_LEN)
            K.sample_view_params(key, cfg, p)
            assert got[v]["jitter"][i] == (bool(p[K.P_JIT]) and policy.uses_color)
            for name, slot in (("gray", K.P_GRAY), ("blur", K.P_BLUR), ("flip", K.P_FLIP)):
                assert got[v][name][i] == bool(p[slot]), name
            assert tuple(got[v]["order"][i]) == tuple(int(o) for o in p[K.P_ORDER:K.P_ORDER + 4])
            np.testing.assert_allclose(got[v]["factors"][i], p[K.P_FACT:K.P_FACT + 4], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got[v]["sigma"][i], p[K.P_SIGMA], rtol=1e-12)


def test_draws_follow_the_policy_and_differ_by_view_and_epoch():
    policy = AugPolicy()
    samples = np.arange(3000)
    h = w = np.full(3000, 48)
    d0, d1 = draws.view_draws(1, 0, samples, h, w, policy, 24, views=2)
    stats = {k: d0[k] for k in ("jitter", "gray", "blur", "flip", "sigma")}
    stats.update({name: d0["factors"][:, i] for i, name in enumerate(("brightness", "contrast", "saturation", "hue"))})
    stats["area"] = d0["crop"][:, 2] * d0["crop"][:, 3] / (48 * 48)
    check_policy_draws(stats, policy, 48, 48, 24)
    assert not np.array_equal(d0["crop"], d1["crop"])  # the two views draw independently
    again = draws.view_draws(1, 0, samples, h, w, policy, 24, views=1)[0]
    other_epoch = draws.view_draws(1, 1, samples, h, w, policy, 24, views=1)[0]
    assert np.array_equal(again["crop"], d0["crop"]) and not np.array_equal(other_epoch["crop"], d0["crop"])
    # a sample's draws do not depend on which other samples share its batch
    part = draws.view_draws(1, 0, samples[10:20], h[10:20], w[10:20], policy, 24, views=1)[0]
    assert np.array_equal(part["crop"], d0["crop"][10:20]) and np.array_equal(part["flip"], d0["flip"][10:20])
    assert sorted(map(tuple, d0["order"][:50])) != [(0, 1, 2, 3)] * 50
    assert all(sorted(o) == [0, 1, 2, 3] for o in d0["order"].tolist())
