import torch

from fasthpt.eval import common
from fasthpt.eval.linear import PAPER_BATCH, PAPER_LR, feature_batches, train_linear


def separable(n, d=16, c=5, seed=0):
    """Features whose class is the argmax of a fixed random linear map (linearly separable)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, c, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, d, generator=gen).relu() * 3  # non-negative and unnormalised, like pooled ReLU features
    return x, (x @ w).argmax(1)


def test_linear_probe_reaches_near_100_on_separable_features():
    x, y = separable(2000)
    vx, vy = separable(500, seed=1)
    batch = 128
    gen = torch.Generator().manual_seed(0)
    tx, ty = separable(500, seed=2)
    head, curves = train_linear(
        feature_batches(x, y, batch, gen), {"val": (vx, vy), "test": (tx, ty)}, 16, 5, iters=300,
        lr=PAPER_LR * batch / PAPER_BATCH, eval_every=50,
    )
    assert curves.iters == [0, 50, 100, 150, 200, 250, 300]  # from iteration 0, as the authors' hooks
    assert curves.val[0] < 0.5 and min(curves.val[-1], curves.test[-1]) >= 0.95, (curves.val, curves.test)
    out = curves.report()
    assert out["best_iter"] in (250, 300) and out["top1"] == curves.test[curves.iters.index(out["best_iter"])]


def test_linear_probe_on_shuffled_labels_stays_near_chance():
    x, y = separable(1000)
    vx, vy = separable(500, seed=1)
    noise = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    _, curves = train_linear(feature_batches(x, noise, 100), {"val": (vx, vy), "test": (vx, vy)}, 16, 5, iters=100,
                             lr=1.0, eval_every=100)
    assert curves.iters == [0, 100] and curves.val[-1] < 0.6


def test_step_schedule_drops_at_one_and_two_thirds():
    lrs = [common.step_lr(1.0, it, 9, 0.1) for it in range(9)]
    assert lrs[:3] == [1.0] * 3
    assert all(abs(v - 0.1) < 1e-12 for v in lrs[3:6])
    assert all(abs(v - 0.01) < 1e-12 for v in lrs[6:])


def test_feature_batches_cover_each_epoch_once():
    x = torch.arange(10.0)[:, None]
    it = feature_batches(x, torch.arange(10), 5, torch.Generator().manual_seed(0))
    first_epoch = torch.cat([next(it)[1] for _ in range(2)])
    assert sorted(first_epoch.tolist()) == list(range(10))
