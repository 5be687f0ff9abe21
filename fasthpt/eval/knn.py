"""Weighted cosine kNN on frozen features (the standard SSL monitor: Wu et al. 2018, as in
MoCo / solo-learn monitors): each of the k nearest train features votes exp(sim / t) for its class.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F


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
    """Class scores for each query.

    train_feats: N x D, train_labels: N (int64), query_feats: M x D -> scores M x num_classes.
    Features are L2-normalised here; similarity is cosine. Queries are processed in chunks so the
    M x N similarity matrix never needs to exist whole.
    """
    train = F.normalize(train_feats.float(), dim=1)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, query_feats.shape[0], chunk):
        q = F.normalize(query_feats[start : start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)  # M x k
        weights = (sim / t).exp()
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


def run_knn(
    backbone, data, *, arch: str | None = None, k: int = 20, t: float = 0.07, res: int = 64,
    batch_size: int = 256, workers: int = 2, backend: str = "auto", device="auto", seed: int = 0,
    cache_dir=None, use_cache: bool = True, json_path=None, progress: bool = True, quiet: bool = False,
    trust: bool = False,
) -> dict:
    """Weighted cosine kNN of ``backbone`` (path / spec / nn.Module) on ``data``: train features
    vote for val features. Features are extracted once per (backbone, dataset, split, res) and
    cached on disk. A ``k`` above the number of train images is lowered to it, with a notice; the
    result records the k used (``options.k``) and the one asked for (``options.k_requested``).
    Returns the result dict (also printed and appended to ``json_path``)."""
    import time

    from fasthpt.eval import common  # lazy: the training monitor imports only knn_predict

    if k < 1 or t <= 0:
        raise common.UserError(f"kNN needs k >= 1 and t > 0, got k={k}, t={t}")
    common.check_outputs(json_path, cache_dir, use_cache)
    t0 = time.perf_counter()
    ds, bb, dev, opts = common.frozen_setup(
        backbone, data, arch=arch, seed=seed, device=device, res=res, batch_size=batch_size, workers=workers,
        backend=backend, cache_dir=cache_dir, use_cache=use_cache, progress=progress, trust=trust)
    train_x, train_y, hit_train = common.cached_features(bb, ds, "train", **opts)
    val_x, val_y, hit_val = common.cached_features(bb, ds, "val", **opts)
    k_used = _usable_k(k, len(train_y), quiet)
    top1 = knn_accuracy(train_x.to(dev), train_y.to(dev), val_x.to(dev), val_y.to(dev),
                        ds.manifest.num_classes, k=k_used, t=t)
    wall = time.perf_counter() - t0
    extracted = (0 if hit_train else len(train_y)) + (0 if hit_val else len(val_y))
    options = dict(k=k_used, k_requested=k, t=t, res=res, batch_size=batch_size, backend=backend, workers=workers,
                   seed=seed)
    result = common.make_result(
        "knn", "knn", bb, ds, options, top1=top1, best_iter=None, num_train=len(train_y), num_val=len(val_y),
        features_cached=bool(hit_train and hit_val), wall_clock_s=wall,
        samples_per_s=(extracted or len(train_y) + len(val_y)) / max(wall, 1e-9), device=str(dev),
    )
    return common.finish(result, json_path, quiet)


def _usable_k(k: int, num_train: int, quiet: bool = False) -> int:
    """``k``, or the number of train images when there are fewer (no more neighbours exist)."""
    if 0 < num_train < k:
        if not quiet:
            print(f"note: --k {k} is more than the {num_train} train images; using k={num_train}",
                  file=sys.stderr, flush=True)
        return num_train
    return k
