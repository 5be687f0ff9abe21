import math

import pytest
import torch

from fasthpt.eval.knn import knn_accuracy, knn_predict


def reference_knn(train, train_labels, queries, num_classes, k, t):
    """Explicit loop over queries: cosine similarity to every train feature, k best vote exp(s/t)."""
    scores = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    for i, q in enumerate(queries):
        sims = []
        for j, x in enumerate(train):
            cos = float(q @ x) / (math.sqrt(float(q @ q)) * math.sqrt(float(x @ x)))
            sims.append((cos, j))
        sims.sort(key=lambda p: -p[0])
        for cos, j in sims[:k]:
            scores[i, int(train_labels[j])] += math.exp(cos / t)
    return scores


def test_knn_matches_loop_reference_on_random_features():
    gen = torch.Generator().manual_seed(0)
    for n, m, d, c, k in ((50, 17, 8, 3, 5), (30, 40, 16, 5, 30), (12, 3, 4, 2, 1)):
        train = torch.randn(n, d, generator=gen, dtype=torch.float64)
        labels = torch.randint(0, c, (n,), generator=gen)
        queries = torch.randn(m, d, generator=gen, dtype=torch.float64)
        ref = reference_knn(train, labels, queries, c, min(k, n), 0.07)
        got = knn_predict(train, labels, queries, c, k=k, t=0.07, chunk=7)
        # the scores come divided by exp(s_max / t) of each query's nearest neighbour (so that no t overflows)
        nearest = torch.nn.functional.cosine_similarity(queries[:, None], train[None], dim=2).max(1).values
        torch.testing.assert_close(got.double() * torch.exp(nearest / 0.07)[:, None], ref, rtol=1e-4, atol=1e-3)
        assert torch.equal(got.argmax(1), ref.argmax(1))


def test_knn_accuracy_on_clustered_features_and_empty_query():
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 32, generator=gen) * 5
    y_train = torch.arange(4).repeat(25)
    y_val = torch.arange(4).repeat(10)
    x_train = centers[y_train] + torch.randn(100, 32, generator=gen)
    x_val = centers[y_val] + torch.randn(40, 32, generator=gen)
    assert knn_accuracy(x_train, y_train, x_val, y_val, 4) > 0.95
    # Unstructured features (pure noise) give no better than a coin flip per query.
    assert knn_accuracy(torch.randn(100, 32, generator=gen), y_train, x_val, y_val, 4) < 0.6
    assert math.isnan(knn_accuracy(x_train, y_train, x_val[:0], y_val[:0], 4))


def test_grid_equals_one_knn_per_point():
    from fasthpt.eval.knn import knn_grid_accuracy

    gen = torch.Generator().manual_seed(2)
    centers = torch.randn(3, 16, generator=gen) * 2
    y_train, y_query = torch.arange(3).repeat(20), torch.arange(3).repeat(15)
    x_train = centers[y_train] + torch.randn(60, 16, generator=gen) * 2
    x_query = centers[y_query] + torch.randn(45, 16, generator=gen) * 2
    ks, ts = [1, 5, 20, 100], [0.02, 0.07, 0.5]  # k 100 > 60 train features: lowered to 60
    grid = knn_grid_accuracy(x_train, y_train, x_query, y_query, 3, ks, ts, chunk=16)
    assert grid.shape == (4, 3)
    for i, k in enumerate(ks):
        for j, t in enumerate(ts):
            assert grid[i, j].item() == pytest.approx(knn_accuracy(x_train, y_train, x_query, y_query, 3, k=k, t=t))
    assert len({round(v, 6) for v in grid.flatten().tolist()}) > 1  # the grid points differ


def test_selection_on_the_grid_takes_the_first_best():
    from fasthpt.eval.knn import select_on_grid

    val = torch.tensor([[0.5, 0.7, 0.7], [0.7, 0.6, 0.2]])
    assert select_on_grid(val) == (0, 1)  # k-major order: (0, 1) comes before (0, 2) and (1, 0)
