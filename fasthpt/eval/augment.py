"""Batched RandomResizedCrop + horizontal flip on tensors, on whatever device the batch is on.

The labelled train-time augmentation of the linear probe and of fine-tuning (MoCo's main_lincls
and OpenSelfSup's train_pipeline: RandomResizedCrop(224) with torchvision's default scale
(0.08, 1) and ratio (3/4, 4/3), then RandomHorizontalFlip). It runs on batches of already decoded,
normalised images (the eval loader's center crops at a slightly larger side, see
common.source_res), one affine grid per image, so it costs one grid_sample per batch on the GPU.
Bilinear sampling without anti-aliasing: crops are at most ~1.2x larger than the output, where
aliasing is negligible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# torchvision.transforms.RandomResizedCrop defaults, used by MoCo / OpenSelfSup linear eval.
LINEAR_SCALE = (0.08, 1.0)
LINEAR_RATIO = (3 / 4, 4 / 3)


def sample_boxes(
    n: int, height: int, width: int, scale=LINEAR_SCALE, ratio=LINEAR_RATIO, generator=None, tries: int = 10
) -> torch.Tensor:
    """n crop boxes (x0, y0, w, h) in pixels, drawn as torchvision's RandomResizedCrop draws them:
    area fraction ~ U(scale), log aspect ratio ~ U(log ratio), up to ``tries`` draws, the first
    that fits wins; otherwise the central crop with the ratio clamped to ``ratio``."""
    area = height * width
    frac = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    logr = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w = (area * frac * logr.exp()).sqrt().round()
    h = (area * frac / logr.exp()).sqrt().round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    rows = torch.arange(n)
    bw = torch.where(first >= 0, w[rows, first.clamp(min=0)], torch.tensor(float(fw)))
    bh = torch.where(first >= 0, h[rows, first.clamp(min=0)], torch.tensor(float(fh)))
    u = torch.rand(n, 2, generator=generator)
    x0 = torch.where(first >= 0, (u[:, 0] * (width - bw + 1)).floor(), (width - bw) / 2)
    y0 = torch.where(first >= 0, (u[:, 1] * (height - bh + 1)).floor(), (height - bh) / 2)
    return torch.stack([x0, y0, bw, bh], 1)


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, res: int) -> torch.Tensor:
    """Crop ``boxes`` (N x 4: x0, y0, w, h pixels) out of ``images`` (N x C x H x W), resize each to
    res x res (bilinear) and mirror the rows where ``flip`` (N bool) is set."""
    n, _, height, width = images.shape
    boxes = boxes.to(images.device, torch.float32)
    x0, y0, bw, bh = boxes.unbind(1)
    # affine_grid maps output coords in [-1, 1] to input coords in [-1, 1] (align_corners=False).
    sx = bw / width
    sy = bh / height
    tx = (2 * x0 + bw) / width - 1
    ty = (2 * y0 + bh) / height - 1
    sx = torch.where(flip.to(images.device), -sx, sx)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, [n, images.shape[1], res, res], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop_flip(
    images: torch.Tensor, res: int, scale=LINEAR_SCALE, ratio=LINEAR_RATIO, flip_p: float = 0.5, generator=None
) -> torch.Tensor:
    """One RandomResizedCrop(res, scale, ratio) + RandomHorizontalFlip(flip_p) per image of a batch."""
    n, _, height, width = images.shape
    boxes = sample_boxes(n, height, width, scale, ratio, generator)
    flip = torch.rand(n, generator=generator) < flip_p
    return crop_resize_flip(images, boxes, flip, res)
