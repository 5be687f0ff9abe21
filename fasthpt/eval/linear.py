"""Linear probe: a frozen backbone (eval mode, BatchNorm statistics frozen), one linear layer on its
pooled features, the paper's recipe scaled by options.

Recipe (HPT.md; OpenSelfSup configs/benchmarks/linear_classification/resisc45/r50_last.py; MoCo's
main_lincls): SGD lr 30 for a batch of 512, scaled linearly with the batch; momentum 0.9; weight
decay 0; lr x0.1 at 1/3 and 2/3 of the iterations; features not normalised (lr 30 is sized for
raw ResNet features). Train aug RandomResizedCrop + flip, test resize + center crop. The best
validation point is reported, and the final one.

Two modes, named in the result: ``linear`` (augmented: every step runs the frozen backbone on
fresh random crops) and ``linear-precomputed`` (fast: trains on the cached center-crop features,
no augmentation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fasthpt.eval import common
from fasthpt.eval.augment import random_resized_crop_flip

PAPER_LR = 30.0  # for a batch of 512 (MoCo main_lincls, OpenSelfSup r50_last.py)
PAPER_BATCH = 512
LR_GAMMA = 0.1  # step decay factor at 1/3 and 2/3 (HPT.md)


@dataclass
class ProbeCurve:
    best_top1: float = float("nan")
    best_iter: int | None = None
    final_top1: float = float("nan")
    points: list = field(default_factory=list)  # [(iteration, top1), ...]

    def add(self, it: int, top1: float) -> None:
        self.points.append((it, top1))
        self.final_top1 = top1
        if self.best_iter is None or top1 > self.best_top1:
            self.best_top1, self.best_iter = top1, it


def feature_batches(feats: torch.Tensor, labels: torch.Tensor, batch_size: int, generator=None) -> Iterator:
    """Endless minibatches of cached features: a fresh random permutation every epoch."""
    n = feats.shape[0]
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - min(batch_size, n) + 1, batch_size):
            idx = order[start : start + batch_size]
            yield feats[idx], labels[idx]


@torch.no_grad()
def evaluate_head(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, chunk: int = 4096) -> float:
    device = head.weight.device
    correct = 0
    for start in range(0, feats.shape[0], chunk):
        logits = head(feats[start : start + chunk].to(device).float())
        correct += (logits.argmax(1).cpu() == labels[start : start + chunk]).sum().item()
    return correct / max(1, feats.shape[0])


def train_linear(
    batches: Iterator, val_feats: torch.Tensor, val_labels: torch.Tensor, num_features: int,
    num_classes: int, *, iters: int, lr: float, eval_every: int, device="cpu", seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Linear, ProbeCurve]:
    """SGD (momentum 0.9, wd 0) on one linear layer; ``batches`` yields (features, labels).

    ``lr`` is the effective learning rate (already scaled to the batch). Evaluates on the val
    features every ``eval_every`` iterations and after the last one.
    """
    torch.manual_seed(seed)
    head = nn.Linear(num_features, num_classes).to(device)
    # MoCo main_lincls initialises the probe with N(0, 0.01) weights and zero bias.
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    curve = ProbeCurve()
    steps = range(1, iters + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="linear probe", unit="it", leave=False)
    for it in steps:
        for group in opt.param_groups:
            group["lr"] = common.step_lr(lr, it - 1, iters, LR_GAMMA)
        x, y = next(batches)
        loss = F.cross_entropy(head(x.to(device).float()), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % eval_every == 0 or it == iters:
            curve.add(it, evaluate_head(head, val_feats, val_labels))
            if progress:
                steps.set_postfix(loss=f"{loss.item():.3f}", top1=f"{curve.final_top1:.3f}")
    return head, curve


def shuffled(batches: Iterator, batch_size: int, pool_batches: int = 8, generator=None) -> Iterator:
    """Shuffle buffer over a stream of (images, labels) batches (the eval loader does not shuffle):
    keeps ~pool_batches batches of samples and draws each output batch at random from them."""
    pool_x, pool_y = None, None
    for x, y in batches:
        pool_x = x if pool_x is None else torch.cat([pool_x, x])
        pool_y = y if pool_y is None else torch.cat([pool_y, y])
        while pool_x.shape[0] >= pool_batches * batch_size:
            perm = torch.randperm(pool_x.shape[0], generator=generator)
            take, keep = perm[:batch_size].to(pool_x.device), perm[batch_size:].to(pool_x.device)
            yield pool_x[take], pool_y[take.to(pool_y.device)]
            pool_x, pool_y = pool_x[keep], pool_y[keep.to(pool_y.device)]


def endless(make_loader: Callable) -> Iterator:
    while True:
        empty = True
        for batch in make_loader():
            empty = False
            yield batch
        if empty:
            raise common.UserError("the train split yielded no batches")


def frozen_feature_batches(module: nn.Module, images: Iterator, device, crop_res: int | None = None,
                           generator=None) -> Iterator:
    """Frozen-backbone features of a stream of (images, labels); with ``crop_res`` each image is first
    given a RandomResizedCrop + flip on the device (the fallback when only FFCV files exist)."""
    module.eval()
    for x, y in images:
        with torch.no_grad(), common.autocast(device):
            x = x.to(device, non_blocking=True)
            if crop_res:
                x = random_resized_crop_flip(x, crop_res, generator=generator)
            feats = module(x).float().flatten(1)
        yield feats, y  # outside the no_grad block: a suspended generator would keep grad mode off


def augmented_batches(ds: common.Dataset, module: nn.Module, *, res, batch_size, workers, device, backend,
                      seed, generator) -> Iterator:
    """Features of fresh RandomResizedCrop + flip train views. With WebDataset shards: torchvision
    transforms on whole images, shuffled per epoch (labelled.py). FFCV-only data: the eval loader's
    center crops at a slightly larger side (common.source_res), shuffled through a buffer, cropped
    on the device; those crops see the central 87.5% of each image only."""
    if "wds" in ds.manifest.formats:
        from fasthpt.eval.labelled import labelled_train_batches

        images = labelled_train_batches(ds.manifest, res, batch_size, workers, device, seed)
        return frozen_feature_batches(module, images, device)
    src = common.source_res(res)
    loader = lambda: common.eval_loader(ds, "train", src, batch_size, workers, device, backend)  # noqa: E731
    images = shuffled(endless(loader), batch_size, generator=generator)
    return frozen_feature_batches(module, images, device, res, generator)


def run_linear(
    backbone, data, *, arch: str | None = None, iters: int = 300, batch_size: int = 256,
    lr: float = PAPER_LR, eval_every: int | None = None, res: int = 64, precomputed: bool = False,
    workers: int = 2, backend: str = "auto", device="auto", seed: int = 0, cache_dir=None,
    use_cache: bool = True, json_path=None, progress: bool = True, quiet: bool = False, trust: bool = False,
) -> dict:
    """Linear probe of ``backbone`` (path / spec / nn.Module) on ``data``; returns the result dict.

    ``lr`` is given for a batch of 512 and scaled linearly to ``batch_size``.
    """
    t0 = time.perf_counter()
    eval_every = eval_every or max(1, iters // 10)
    if iters < 1 or batch_size < 1 or eval_every < 1 or lr <= 0:
        raise common.UserError("--iters, --batch-size, --eval-every and --lr must be positive")
    common.check_outputs(json_path, cache_dir, use_cache)
    ds, bb, dev, feats = common.frozen_setup(
        backbone, data, arch=arch, seed=seed, device=device, res=res, batch_size=batch_size, workers=workers,
        backend=backend, cache_dir=cache_dir, use_cache=use_cache, progress=progress, trust=trust)
    val_x, val_y, _ = common.cached_features(bb, ds, "val", **feats)
    gen = torch.Generator().manual_seed(seed)
    was_training = bb.module.training
    try:
        if precomputed:
            train_x, train_y, _ = common.cached_features(bb, ds, "train", **feats)
            batches = feature_batches(train_x, train_y, batch_size, gen)
        else:
            batches = augmented_batches(ds, common.place(bb, dev), res=res, batch_size=batch_size, workers=workers,
                                        device=dev, backend=backend, seed=seed, generator=gen)
        eff_lr = lr * batch_size / PAPER_BATCH
        t_train = time.perf_counter()
        _, curve = train_linear(
            batches, val_x, val_y, bb.num_features, ds.manifest.num_classes, iters=iters, lr=eff_lr,
            eval_every=eval_every, device=dev, seed=seed, progress=progress,
        )
        train_s = time.perf_counter() - t_train
    finally:
        bb.module.train(was_training)
    views = "center-crop features" if precomputed else (
        "torchvision RandomResizedCrop+flip on WDS shards" if "wds" in ds.manifest.formats
        else "device RandomResizedCrop+flip of 87.5% center crops")
    options = dict(iters=iters, batch_size=batch_size, lr=lr, lr_effective=eff_lr, eval_every=eval_every,
                   res=res, precomputed=precomputed, train_views=views, seed=seed, backend=backend,
                   workers=workers)
    result = common.make_result(
        "linear", "linear-precomputed" if precomputed else "linear", bb, ds, options,
        top1=curve.best_top1, best_iter=curve.best_iter, final_top1=curve.final_top1, curve=curve.points,
        wall_clock_s=time.perf_counter() - t0, samples_per_s=iters * batch_size / max(train_s, 1e-9),
        device=str(dev),
    )
    return common.finish(result, json_path, quiet)
