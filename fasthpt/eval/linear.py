"""Linear probe: a frozen backbone (eval mode, BatchNorm statistics frozen), one linear layer on its
pooled features; the paper's recipe by default (eval.paper).

Recipe (Reed et al. 2022; the authors' linear-eval configs; MoCo's main_lincls): SGD lr 30 for a batch of
512, scaled linearly with the batch; momentum 0.9; weight decay 0; lr x0.1 at 1/3 and 2/3 of the
iterations; head initialised N(0, 0.01), bias 0; features not normalised (lr 30 is sized for raw
ResNet features). Train views: RandomResizedCrop + flip of the whole image (the labelled loader
of fasthpt.data, every backend); val and test: resize + center crop. Val and test are evaluated at
iteration 0 and every ``eval_every`` iterations (the authors' hooks, initial=True); the reported
``top1`` is test at the best val point of the second half (eval.selection).

Two modes, named in the result: ``linear`` (augmented: every step runs the frozen backbone on
fresh random crops) and ``linear-precomputed`` (fast: trains on the cached center-crop features,
no augmentation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fasthpt.eval import checks, common, paper
from fasthpt.eval.selection import Curves

PAPER_LR = 30.0  # for a batch of 512 (MoCo main_lincls, the authors' linear-eval-lr-s0.py)
PAPER_BATCH = 512
LR_GAMMA = 0.1  # step decay factor at 1/3 and 2/3 (the authors' linear-eval configs)


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
    batches: Iterator, evals: dict, num_features: int, num_classes: int, *, iters: int, lr: float,
    eval_every: int, device="cpu", seed: int = 0, progress: bool = False,
) -> tuple[nn.Linear, Curves]:
    """SGD (momentum 0.9, wd 0) on one linear layer; ``batches`` yields (features, labels).

    ``evals``: {"val": (features, labels), "test": (features, labels)}, evaluated at iteration 0,
    every ``eval_every`` iterations and after the last one. ``lr`` is the effective learning rate
    (already scaled to the batch).
    """
    torch.manual_seed(seed)
    head = nn.Linear(num_features, num_classes).to(device)
    # MoCo main_lincls and OpenSelfSup's ClsHead initialise the probe with N(0, 0.01), bias 0.
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    curves = Curves()

    def evaluate(it):
        curves.add(it, evaluate_head(head, *evals["val"]), evaluate_head(head, *evals["test"]))

    evaluate(0)
    steps = range(1, iters + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="linear probe", unit="it", leave=False)
    for it in steps:
        for group in opt.param_groups:
            group["lr"] = common.step_lr(lr, it - 1, iters, LR_GAMMA)
        x, y = next(batches)
        checks.check_label_range(y, num_classes, "the train split")
        loss = F.cross_entropy(head(x.to(device).float()), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % eval_every == 0 or it == iters:
            evaluate(it)
            if progress:
                steps.set_postfix(loss=f"{loss.item():.3f}", val=f"{curves.val[-1]:.3f}")
    return head, curves


def frozen_feature_batches(module: nn.Module, images: Iterator, device) -> Iterator:
    """Frozen-backbone features of a stream of (images, labels) batches."""
    module.eval()
    for x, y in images:
        with torch.no_grad(), common.autocast(device):
            feats = module(x.to(device, non_blocking=True)).float().flatten(1)
        yield feats, y  # outside the no_grad block: a suspended generator would keep grad mode off


def run_linear(
    backbone, data, *, arch: str | None = None, iters: int = 5000, batch_size: int = PAPER_BATCH,
    lr: float = PAPER_LR, eval_every: int = 100, res: int = 224, precomputed: bool = False,
    workers: int = 2, backend: str = "auto", device="auto", seed: int = 0, cache_dir=None,
    use_cache: bool = True, json_path=None, progress: bool = True, quiet: bool = False, trust: bool = False,
    settings_name: str | None = None, estimate_runs: int = 1,
) -> dict:
    """Linear probe of ``backbone`` (path / spec / nn.Module) on ``data``; returns the result dict.

    ``lr`` is given for a batch of 512 and scaled linearly to the batch used (a batch larger than
    the train split is lowered to it, with a notice). ``estimate_runs``: runs of this budget the
    caller will make (seeds), for the up-front CPU time estimate (0: none).
    """
    t0 = time.perf_counter()
    if min(iters, batch_size, eval_every) < 1 or not (math.isfinite(lr) and lr > 0):
        raise common.UserError("--iters, --batch-size, --eval-every and --lr must be positive")
    common.check_outputs(json_path, cache_dir, use_cache)
    ds, bb, dev, feats = common.frozen_setup(
        backbone, data, arch=arch, seed=seed, device=device, res=res, batch_size=batch_size, workers=workers,
        backend=backend, cache_dir=cache_dir, use_cache=use_cache, progress=progress, trust=trust)
    notices = [common.note(m, quiet) for m in checks.coverage(ds)]
    n_train = ds.manifest.count("train")
    batch = common.clamp_batch(batch_size, n_train, "train images", notices, quiet)
    fc = _forecast(bb, ds, dev, feats, notices, quiet, iters=iters, batch=batch, precomputed=precomputed,
                   runs=estimate_runs)
    evals = {s: common.cached_features(bb, ds, s, forecast=fc, **feats)[:2] for s in ("val", "test")}
    gen = torch.Generator().manual_seed(seed)
    was_training = bb.module.training
    try:
        if precomputed:
            train_x, train_y, _ = common.cached_features(bb, ds, "train", forecast=fc, **feats)
            batches = feature_batches(train_x, train_y, batch, gen)
        else:
            images = common.labelled_batches(ds, res=res, batch_size=batch, workers=workers, device=dev,
                                             backend=backend, seed=seed)
            if fc is not None:
                images = fc.iterate(images, units=lambda batch: len(batch[1]))
            batches = frozen_feature_batches(common.place(bb, dev), images, dev)
        eff_lr = lr * batch / PAPER_BATCH
        t_train = time.perf_counter()
        _, curves = train_linear(batches, evals, bb.num_features, ds.manifest.num_classes, iters=iters, lr=eff_lr,
                                 eval_every=eval_every, device=dev, seed=seed, progress=progress)
        train_s = time.perf_counter() - t_train
    finally:
        bb.module.train(was_training)
    options = dict(iters=iters, batch_size=batch, batch_size_requested=batch_size, lr=lr, lr_effective=eff_lr,
                   eval_every=eval_every, res=res, precomputed=precomputed,
                   train_views="center-crop features" if precomputed else "RandomResizedCrop+flip of the whole image",
                   seed=seed, backend=backend, workers=workers)
    result = common.make_result(
        "linear", "linear-precomputed" if precomputed else "linear", bb, ds, options,
        paper.settings_fields("linear", options, settings_name), **curves.report(), notices=notices,
        num_train=n_train, num_val=len(evals["val"][1]), num_test=len(evals["test"][1]),
        wall_clock_s=time.perf_counter() - t0, samples_per_s=iters * batch / max(train_s, 1e-9), device=str(dev),
    )
    return common.finish(result, json_path, quiet)


def _forecast(bb, ds, dev, feats, notices, quiet, *, iters, batch, precomputed, runs):
    """The run's cost in image passes (fasthpt.forecast, timed on its first batches): the uncached
    feature extractions, plus one backbone pass per training image in the augmented mode."""
    uncached = {s: ds.manifest.count(s) for s in ("train", "val", "test") if not common.is_cached(bb, ds, s, feats)}
    extraction = sum(uncached.values())
    if precomputed:
        passes, hint = extraction, "a lower --res, or a GPU"
    else:
        passes = iters * batch + extraction - uncached.get("train", 0)
        hint = "--precomputed trains on cached center-crop features instead (about {fast}), fewer --iters, or a GPU"
    return common.forecast("this linear probe", passes, dev, notices, quiet, runs, hint, fast_passes=extraction)
