"""Frozen-feature extraction shared by the kNN monitor (training) and the evaluators."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def extract_features(
    model: nn.Module, loader, device: torch.device | str | None = None, progress: bool = False, desc: str = "features",
    forecast=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` (images -> N x D pooled features) over an eval loader yielding
    ``(images, labels)``; returns (features M x D float32 on CPU, labels M int64 on CPU).
    ``forecast`` (fasthpt.forecast.Forecast, in image passes) is told of each batch done.

    The model is put in eval mode for the pass and restored to its previous mode afterwards.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, labels = [], []
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=desc, leave=False, unit="batch")
    try:
        for images, target in batches:
            out = model(images.to(device, non_blocking=True))
            feats.append(out.float().flatten(1).cpu())
            labels.append(target.cpu().long())
            if forecast is not None:
                forecast.tick(len(target))
    finally:
        model.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)
