import torch

from fasthpt.eval import common
from fasthpt.eval.linear import PAPER_BATCH, PAPER_LR, feature_batches, shuffled, train_linear




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
    head, curve = train_linear(
        feature_batches(x, y, batch, gen), vx, vy, 16, 5, iters=300, lr=PAPER_LR * batch / PAPER_BATCH,
        eval_every=50,
    )
    assert curve.best_top1 >= 0.95, curve.points
    assert [p[0] for p in curve.points] == [50, 100, 150, 200, 250, 300]
    assert curve.best_top1 == max(p[1] for p in curve.points)
    assert curve.final_top1 == curve.points[-1][1]


def test_linear_probe_on_shuffled_labels_stays_near_chance():
    x, y = separable(1000)
    vx, vy = separable(500, seed=1)
    noise = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    _, curve = train_linear(feature_batches(x, noise, 100), vx, vy, 16, 5, iters=100, lr=1.0, eval_every=100)
    assert curve.final_top1 < 0.6


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


def test_shuffle_buffer_mixes_class_sorted_stream():
    stream = ((torch.full((8, 1), float(c)), torch.full((8,), c)) for c in range(20) for _ in range(2))
    out = list(shuffled(stream, 8, pool_batches=8, generator=torch.Generator().manual_seed(0)))
    first = out[0][1]
    assert len(set(first.tolist())) > 1  # a batch mixes several classes
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in out)  # images stay with their labels
