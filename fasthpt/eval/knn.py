"""Weighted cosine kNN on frozen features (the standard SSL monitor: Wu et al. 2018, as in
MoCo / solo-learn monitors): each of the k nearest train features votes exp(sim / t) for its class.

As a protocol (``run_knn``): the train split is the memory bank, (k, t) is chosen on val over a
small grid (K_GRID x T_GRID), and test is reported with that choice; the result keeps the grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fasthpt.eval.checks import check_label_range, coverage

# The grid (k, t) is chosen on: k from DINO's eval_knn.py (nb_knn 10, 20, 100, 200), t around the
# 0.07 of Wu et al. 2018 (InstDisc) and DINO.
K_GRID = (10, 20, 100, 200)
T_GRID = (0.02, 0.05, 0.07, 0.1, 0.2)


def vote_weights(sim: torch.Tensor, t: float) -> torch.Tensor:
    """exp(sim / t) of each query's neighbours (sim: M x k, sorted descending as topk gives it),
    divided by the largest: exp((sim - max) / t) lies in (0, 1], so no temperature overflows it
    (exp(1 / 0.001) is inf in float32, and inf votes tie every class). Dividing a query's votes by
    one number changes none of its class rankings. In float64: a t below float32's smallest number
    (1e-45) would become 0 there, and 0 / 0 is NaN."""
    return ((sim - sim[:, :1]).double() / t).exp().to(sim.dtype)


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    t: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores for each query: the sum of exp(sim / t) over its k neighbours of each class,
    divided by exp(s_max / t) of the query's nearest one (vote_weights: the same ranking, finite
    at any t).

    train_feats: N x D, train_labels: N (int64), query_feats: M x D -> scores M x num_classes.
    Features are L2-normalised here; similarity is cosine. Queries are processed in chunks so the
    M x N similarity matrix never needs to exist whole.
    """
    check_label_range(train_labels, num_classes, "the train split")
    train = F.normalize(train_feats.float(), dim=1)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, query_feats.shape[0], chunk):
        q = F.normalize(query_feats[start : start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)  # M x k
        weights = vote_weights(sim, t)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_accuracy(train_feats, train_labels, query_feats, query_labels, num_classes, k=20, t=0.07) -> float:
    """Top-1 accuracy (0..1) of weighted cosine kNN."""
    if query_feats.shape[0] == 0:
        return float("nan")
    scores = knn_predict(train_feats, train_labels, query_feats, num_classes, k=k, t=t)
    return (scores.argmax(1) == query_labels).float().mean().item()


@torch.no_grad()
def knn_grid_accuracy(train_feats, train_labels, query_feats, query_labels, num_classes: int, ks, ts,
                      chunk: int = 1024) -> torch.Tensor:
    """Top-1 accuracy (0..1) of weighted cosine kNN for every (k, t) of a grid: len(ks) x len(ts).
    One similarity pass: the top max(ks) neighbours of each query serve every k (topk is sorted)."""
    check_label_range(train_labels, num_classes, "the train split")
    train = F.normalize(train_feats.float(), dim=1)
    ks = [min(k, train.shape[0]) for k in ks]
    correct = torch.zeros(len(ks), len(ts))
    for start in range(0, query_feats.shape[0], chunk):
        q = F.normalize(query_feats[start : start + chunk].float(), dim=1)
        y = query_labels[start : start + chunk].to(q.device)
        sim, idx = (q @ train.T).topk(max(ks), dim=1)
        neighbours = train_labels[idx]
        for j, t in enumerate(ts):
            weights = vote_weights(sim, t)
            for i, k in enumerate(ks):
                votes = torch.zeros(q.shape[0], num_classes, device=q.device)
                votes.scatter_add_(1, neighbours[:, :k], weights[:, :k])
                correct[i, j] += (votes.argmax(1) == y).sum().item()
    return correct / max(1, query_feats.shape[0])


def select_on_grid(val_top1: torch.Tensor) -> tuple[int, int]:
    """(i, j) of the best val accuracy; the first in grid order (k-major) wins ties."""
    flat = int(torch.argmax(val_top1.flatten()).item())  # argmax returns the first maximal element
    return divmod(flat, val_top1.shape[1])


def run_knn(
    backbone, data, *, arch: str | None = None, k=None, t=None, res: int = 224, batch_size: int = 256,
    workers: int = 2, backend: str = "auto", device="auto", seed: int = 0, cache_dir=None, use_cache: bool = True,
    json_path=None, progress: bool = True, quiet: bool = False, trust: bool = False, settings_name: str | None = None,
    estimate_runs: int = 1,
) -> dict:
    """Weighted cosine kNN of ``backbone`` (path / spec / nn.Module) on ``data``, the train split as
    the memory bank: (k, t) chosen on val over a grid (``k``, ``t``: one value or a sequence each;
    default K_GRID x T_GRID), reported on test with that choice. Features are extracted once per
    (backbone, dataset, split, res) and cached on disk. A k above the number of train images is
    lowered to it, with a notice. Returns the result dict (also printed and appended to ``json_path``)."""
    import time

    from fasthpt.eval import common, paper  # lazy: the training monitor imports only knn_accuracy

    ks_requested, ts = _grid(k, K_GRID), _grid(t, T_GRID)
    if not ks_requested or not ts or min(ks_requested) < 1 or not all(math.isfinite(v) and v > 0 for v in ts):
        raise common.UserError(f"kNN needs k >= 1 and a finite t > 0, got k={ks_requested}, t={ts}")
    common.check_outputs(json_path, cache_dir, use_cache)
    t0 = time.perf_counter()
    ds, bb, dev, opts = common.frozen_setup(
        backbone, data, arch=arch, seed=seed, device=device, res=res, batch_size=batch_size, workers=workers,
        backend=backend, cache_dir=cache_dir, use_cache=use_cache, progress=progress, trust=trust)
    notices = [common.note(m, quiet) for m in coverage(ds)]
    n_train = ds.manifest.count("train")
    ks = _usable_ks(ks_requested, n_train, notices, quiet)
    fc = _forecast(bb, ds, dev, opts, notices, quiet, runs=estimate_runs)
    feats = {s: common.cached_features(bb, ds, s, forecast=fc, **opts) for s in ("train", "val", "test")}
    train_x, train_y = feats["train"][0].to(dev), feats["train"][1].to(dev)
    grid = {s: knn_grid_accuracy(train_x, train_y, feats[s][0].to(dev), feats[s][1].to(dev),
                                 ds.manifest.num_classes, ks, ts) for s in ("val", "test")}
    i, j = select_on_grid(grid["val"])
    wall = time.perf_counter() - t0
    extracted = sum(len(feats[s][1]) for s in feats if not feats[s][2])
    options = dict(k=list(ks), k_requested=list(ks_requested), t=list(ts), res=res, batch_size=batch_size,
                   backend=backend, workers=workers, seed=seed)
    result = common.make_result(
        "knn", "knn", bb, ds, options, paper.settings_fields("knn", options, settings_name),
        top1=float(grid["test"][i, j]), val_top1=float(grid["val"][i, j]), k=ks[i], t=ts[j], best_iter=None,
        selection="(k, t) with the best val top-1 (first in grid order on ties), reported on test",
        grid={"k": list(ks), "t": list(ts), "val_top1": grid["val"].tolist(), "test_top1": grid["test"].tolist()},
        notices=notices, num_train=len(train_y), num_val=len(feats["val"][1]), num_test=len(feats["test"][1]),
        features_cached=not extracted, wall_clock_s=wall,
        samples_per_s=(extracted or sum(len(f[1]) for f in feats.values())) / max(wall, 1e-9), device=str(dev),
    )
    return common.finish(result, json_path, quiet)


def _forecast(bb, ds, dev, opts, notices, quiet, *, runs):
    """The run's cost (fasthpt.forecast, timed on its first batches): one pass per image of each
    split not yet cached."""
    from fasthpt.eval import common

    passes = sum(ds.manifest.count(s) for s in ("train", "val", "test") if not common.is_cached(bb, ds, s, opts))
    return common.forecast("this kNN evaluation", passes, dev, notices, quiet, runs, "a lower --res, or a GPU")


def _grid(value, default) -> list:
    if value is None:
        return list(default)
    return [value] if isinstance(value, (int, float)) else list(value)


def _usable_ks(ks: list, num_train: int, notices: list, quiet: bool = False) -> list:
    """``ks`` with each k above the number of train images lowered to it (no more neighbours exist),
    repeats dropped, with a notice."""
    from fasthpt.eval import common

    too_big = [k for k in ks if k > num_train > 0]
    if too_big:
        notices.append(common.note(f"--k {','.join(map(str, too_big))} is more than the {num_train} train images; "
                                   f"using k={num_train}", quiet))
    return list(dict.fromkeys(min(k, num_train) if num_train > 0 else k for k in ks))
