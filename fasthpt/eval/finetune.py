"""K-label fine-tuning (HPT's semi-supervised protocol): the whole network, K labelled images.

Recipe (HPT.md; OpenSelfSup configs/benchmarks/semi_classification/resisc_1000/base.py and its
r50_lr0_01_head100.py): SGD momentum 0.9, weight decay 0, lr 0.01 (or 0.001) for the backbone and
x100 for the linear head, effective batch 256 (here by gradient accumulation when the batch is
smaller), lr x0.2 at 1/3 and 2/3 of the schedule (that config's step [200, 400] of 600 epochs,
gamma 0.2), BatchNorm in train mode, RandomResizedCrop + flip train aug, resize + center crop test.
The best validation top-1 is reported, and the final one.

The K labelled images are held in memory (K is small by definition: 1,000 in the paper) as the
eval loader's center crops at a slightly larger side, and augmented on the device per step.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fasthpt.errors import UserError
from fasthpt.eval import common
from fasthpt.eval.augment import random_resized_crop_flip
from fasthpt.eval.linear import ProbeCurve

PAPER_EFFECTIVE_BATCH = 256
LR_GAMMA = 0.2  # OpenSelfSup semi_classification/resisc_1000/base.py lr_config gamma


def stratified_ranks(per_class: list[int], k: int, seed: int) -> list[torch.Tensor]:
    """Which images of each class to keep: for class c, sorted ranks among that class's images
    (in loader order). K // C per class; the K % C remainder (and the shortfall of classes with
    too few images) goes one image at a time to classes in a seeded random order. Repeatable:
    the same (per_class, k, seed) always gives the same ranks."""
    total = sum(per_class)
    if k < 1 or k > total:
        raise UserError(f"--labels {k}: must be between 1 and the {total} training images")
    num_classes = len(per_class)
    quota = [min(k // num_classes, n) for n in per_class]
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    left = k - sum(quota)
    while left > 0:
        for c in order:
            if left and quota[c] < per_class[c]:
                quota[c] += 1
                left -= 1
    ranks = []
    for c, (n, q) in enumerate(zip(per_class, quota)):
        # One generator per class: the pick inside class c does not depend on the other classes.
        gen = torch.Generator().manual_seed(seed * 1_000_003 + c)
        ranks.append(torch.randperm(n, generator=gen)[:q].sort().values)
    return ranks


def subset_indices(labels: torch.Tensor, ranks: list[torch.Tensor]) -> torch.Tensor:
    """Positions in ``labels`` (loader order) of the images that ``ranks`` selects."""
    picked = []
    for c, r in enumerate(ranks):
        positions = (labels == c).nonzero().flatten()
        picked.append(positions[r])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


def collect_subset(loader, ranks: list[torch.Tensor], progress: bool = False):
    """One pass over the (unshuffled) train loader keeping the selected images, on the CPU in
    float16 (normalised pixels need no more precision). Returns (images K x 3 x S x S, labels K)."""
    wanted = [set(r.tolist()) for r in ranks]
    seen = [0] * len(ranks)
    keep_x, keep_y = [], []
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="labelled subset", unit="batch", leave=False)
    for images, labels in batches:
        mask = torch.zeros(len(labels), dtype=torch.bool)
        for i, c in enumerate(labels.tolist()):
            if 0 <= c < len(seen):
                mask[i] = seen[c] in wanted[c]
                seen[c] += 1
        if mask.any():
            keep_x.append(images[mask.to(images.device)].to("cpu", torch.float16))
            keep_y.append(labels.cpu()[mask])
    expected = [len(r) for r in ranks]
    got = torch.bincount(torch.cat(keep_y), minlength=len(ranks)).tolist() if keep_y else [0] * len(ranks)
    if got != expected:
        raise UserError(f"train split per-class counts differ from manifest.json (got {seen}); re-run `fasthpt prep`")
    return torch.cat(keep_x), torch.cat(keep_y)


def index_batches(n: int, batch_size: int, generator=None) -> Iterator[torch.Tensor]:
    """Endless random minibatches of indices into n samples, a fresh permutation per epoch."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for images, labels in loader:
            with common.autocast(device):
                logits = model(images.to(device, non_blocking=True))
            correct += (logits.argmax(1).cpu() == labels.cpu()).sum().item()
            total += len(labels)
    finally:
        model.train(was_training)
    return correct / max(1, total)


def make_optimizer(backbone: nn.Module, head: nn.Module, lr: float, head_mult: float) -> torch.optim.SGD:
    groups = [
        {"params": list(backbone.parameters()), "lr": lr, "base_lr": lr},
        {"params": list(head.parameters()), "lr": lr * head_mult, "base_lr": lr * head_mult},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=0.0)


def finetune(
    backbone: nn.Module, num_features: int, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
    val_loader_fn, *, iters: int, batch_size: int, effective_batch: int, lr: float, head_mult: float,
    res: int, eval_every: int, device, seed: int, progress: bool = False,
) -> tuple[ProbeCurve, float, int]:
    """Train backbone + a fresh linear head; returns (curve, train seconds, train samples)."""
    torch.manual_seed(seed)
    head = nn.Linear(num_features, num_classes)
    nn.init.normal_(head.weight, std=0.01)  # OpenSelfSup ClsHead init
    nn.init.zeros_(head.bias)
    model = nn.Sequential(backbone, head).to(device).train()
    opt = make_optimizer(backbone, head, lr, head_mult)
    accum = max(1, math.ceil(effective_batch / batch_size))
    gen = torch.Generator().manual_seed(seed)
    idx_stream = index_batches(len(labels), batch_size, gen)
    curve, train_s, seen = ProbeCurve(), 0.0, 0
    steps = range(1, iters + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="fine-tune", unit="it", leave=False)
    for it in steps:
        t = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = common.step_lr(group["base_lr"], it - 1, iters, LR_GAMMA)
        opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            idx = next(idx_stream)
            x = random_resized_crop_flip(images[idx].to(device).float(), res, generator=gen)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with common.autocast(device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx].to(device)) / accum
            loss.backward()
            seen += len(idx)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - t
        if it % eval_every == 0 or it == iters:
            curve.add(it, evaluate(model, val_loader_fn(), device))
            if progress:
                steps.set_postfix(loss=f"{loss.item() * accum:.3f}", top1=f"{curve.final_top1:.3f}")
    return curve, train_s, seen


def run_finetune(
    backbone, data, *, labels: int = 1000, arch: str | None = None, iters: int = 100, batch_size: int = 64,
    effective_batch: int = PAPER_EFFECTIVE_BATCH, lr: float = 0.01, head_mult: float = 100.0,
    eval_every: int | None = None, res: int = 64, workers: int = 2, backend: str = "auto", device="auto",
    seed: int = 0, json_path=None, progress: bool = True, quiet: bool = False, trust: bool = False,
) -> dict:
    """Fine-tune ``backbone`` (path / spec / nn.Module; an in-memory module is copied, never
    changed) on ``labels`` images of ``data``'s train split; returns the result dict."""
    t0 = time.perf_counter()
    common.check_outputs(json_path)
    ds = common.resolve_data(data)
    eval_every = eval_every or max(1, iters // 5)
    if min(iters, batch_size, effective_batch, eval_every) < 1 or lr <= 0:
        raise UserError("--iters, --batch-size, --effective-batch, --eval-every and --lr must be positive")
    per_class = ds.manifest.raw["splits"]["train"].get("per_class")
    if not per_class or len(per_class) != ds.manifest.num_classes:
        raise UserError(f"{ds.root}/manifest.json lacks splits.train.per_class; re-run `fasthpt prep`")
    ranks = stratified_ranks([int(n) for n in per_class], labels, seed)
    bb = common.resolve_backbone(backbone, arch, seed, trust)
    dev = common.module_device(bb, device)
    work = bb
    if bb.source == common.IN_MEMORY:  # fine-tune a copy: the caller's model stays as it was
        work = common.Backbone(copy.deepcopy(bb.module), "<copy>", bb.fingerprint, bb.arch)
    module = common.place(work, dev)
    src = common.source_res(res)
    train_loader = common.eval_loader(ds, "train", src, batch_size, workers, dev, backend)
    images, targets = collect_subset(train_loader, ranks, progress)
    curve, train_s, seen = finetune(
        module, bb.num_features, images, targets, ds.manifest.num_classes,
        lambda: common.eval_loader(ds, "val", res, batch_size, workers, dev, backend),
        iters=iters, batch_size=batch_size, effective_batch=effective_batch, lr=lr, head_mult=head_mult,
        res=res, eval_every=eval_every, device=dev, seed=seed, progress=progress,
    )
    options = dict(labels=labels, iters=iters, batch_size=batch_size, effective_batch=effective_batch,
                   accumulation=max(1, math.ceil(effective_batch / batch_size)), lr=lr, head_mult=head_mult,
                   eval_every=eval_every, res=res, seed=seed, backend=backend, workers=workers)
    result = common.make_result(
        "finetune", f"finetune-{labels}", bb, ds, options, top1=curve.best_top1, best_iter=curve.best_iter,
        final_top1=curve.final_top1, curve=curve.points, wall_clock_s=time.perf_counter() - t0,
        samples_per_s=seen / max(train_s, 1e-9), device=str(dev),
    )
    return common.finish(result, json_path, quiet)
