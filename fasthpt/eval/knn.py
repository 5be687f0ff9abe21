"""Weighted cosine kNN on frozen features (the standard SSL monitor: Wu et al. 2018, as in
MoCo / solo-learn monitors): each of the k nearest train features votes exp(sim / t) for its class.
"""

from __future__ import annotations

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
