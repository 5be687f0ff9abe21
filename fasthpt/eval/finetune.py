"""K-label fine-tuning (HPT's semi-supervised protocol): the whole network, K labelled images.

Recipe: the authors' finetune/1000-labels configs (eval.paper): SGD momentum 0.9, weight decay 0,
lr 0.01 (or 0.001) for the backbone and x100 for the linear head, batch 64 with an update every 4
iterations (256 images per update), 2,500 iterations with lr x0.1 at 1/3 and 2/3 (their steps
833 and 1667), BatchNorm in train mode; train views RandomResizedCrop + flip of the whole image
(the labelled loader of fasthpt.data over the K images), val and test resize + center crop, both
evaluated every 100 iterations. The reported ``top1`` is test at the best val point of the second
half (eval.selection).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fasthpt.errors import UserError
from fasthpt.eval import budget, common, paper
from fasthpt.eval.selection import Curves

LR_GAMMA = 0.1  # the authors' finetune/1000-labels configs: lr_config gamma 0.1


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
    model: nn.Module, opt: torch.optim.Optimizer, batches: Iterator, evals: dict, *, iters: int, accum_steps: int,
    eval_every: int, device, progress: bool = False,
) -> tuple[Curves, float, int]:
    """Train ``model`` (backbone + head, BatchNorm in train mode) for ``iters`` iterations of one batch
    each, an optimizer update every ``accum_steps`` iterations and after the last one (the authors'
    update_interval; the loss is divided by it, as their optimizer hook does); the lr steps by
    LR_GAMMA at 1/3 and 2/3 of the iterations; ``evals`` ({"val": loader, "test": loader}) every
    ``eval_every`` iterations and after the last. Returns (curves, train seconds, train samples)."""
    curves, train_s, seen = Curves(), 0.0, 0
    model.train()
    steps = range(1, iters + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="fine-tune", unit="it", leave=False)
    opt.zero_grad(set_to_none=True)
    for it in steps:
        t = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = common.step_lr(group["base_lr"], it - 1, iters, LR_GAMMA)
        x, y = next(batches)
        with common.autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y.to(device)) / accum_steps
        loss.backward()
        seen += len(y)
        if it % accum_steps == 0 or it == iters:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - t
        if it % eval_every == 0 or it == iters:
            curves.add(it, evaluate(model, evals["val"], device), evaluate(model, evals["test"], device))
            if progress:
                steps.set_postfix(loss=f"{loss.item() * accum_steps:.3f}", val=f"{curves.val[-1]:.3f}")
    return curves, train_s, seen


def labelled_subset(ds, k: int, seed: int) -> torch.Tensor:
    """Sample indices of the K labelled train images: stratified_ranks over the manifest's per-class
    counts, placed with the split's labels (read without decoding: fasthpt.data.split_labels)."""
    from fasthpt.data import split_labels

    per_class = ds.manifest.per_class("train")  # UserError when the manifest does not record it
    labels = split_labels(ds.manifest, "train")
    counts = torch.bincount(labels, minlength=len(per_class)).tolist()
    if counts != per_class:
        raise UserError(f"{ds.root}: train labels per class {counts} differ from manifest.json {per_class}; "
                        "re-run `fasthpt prep`")
    return subset_indices(labels, stratified_ranks(per_class, k, seed))


def run_finetune(
    backbone, data, *, labels: int = 1000, arch: str | None = None, iters: int = 2500, batch_size: int = 64,
    accum_steps: int = 4, lr: float = 0.01, head_mult: float = 100.0, eval_every: int = 100, res: int = 224,
    workers: int = 2, backend: str = "auto", device="auto", seed: int = 0, subset_seed: int = 0, json_path=None,
    progress: bool = True, quiet: bool = False, trust: bool = False, settings_name: str | None = None,
    estimate_runs: int = 1,
) -> dict:
    """Fine-tune ``backbone`` (path / spec / nn.Module; an in-memory module is copied, never changed)
    on ``labels`` train images of ``data`` (a stratified subset drawn with ``subset_seed``: the same
    subset for every ``seed``, as the authors' one labelled list); returns the result dict."""
    t0 = time.perf_counter()
    if min(iters, batch_size, accum_steps, eval_every) < 1 or lr <= 0:
        raise UserError("--iters, --batch-size, --accum-steps, --eval-every and --lr must be positive")
    common.check_outputs(json_path)
    ds = common.resolve_protocol_data(data)
    subset = labelled_subset(ds, labels, subset_seed)
    bb = common.resolve_backbone(backbone, arch, seed, trust)
    dev = common.module_device(bb, device)
    work = bb
    if bb.source == common.IN_MEMORY:  # fine-tune a copy: the caller's model stays as it was
        work = common.Backbone(copy.deepcopy(bb.module), "<copy>", bb.fingerprint, bb.arch)
    module = common.place(work, dev)
    notices = []
    batch = common.clamp_batch(batch_size, labels, "labelled images", notices, quiet)
    _announce(module, ds, dev, notices, quiet, labels=labels, iters=iters, batch=batch, eval_every=eval_every,
              res=res, runs=estimate_runs)
    evals = {s: common.eval_loader(ds, s, res, batch, workers, dev, backend) for s in ("val", "test")}
    model = _with_head(module, bb.num_features, ds.manifest.num_classes, seed).to(dev)
    opt = make_optimizer(module, model[1], lr, head_mult)
    batches = common.labelled_batches(ds, res=res, batch_size=batch, workers=workers, device=dev, backend=backend,
                                      seed=seed, indices=subset)
    curves, train_s, seen = finetune(model, opt, batches, evals, iters=iters, accum_steps=accum_steps,
                                     eval_every=eval_every, device=dev, progress=progress)
    options = dict(labels=labels, iters=iters, batch_size=batch, batch_size_requested=batch_size,
                   accum_steps=accum_steps, images_per_update=batch * accum_steps,
                   updates=-(-iters // accum_steps), lr=lr, head_mult=head_mult, eval_every=eval_every, res=res,
                   seed=seed, subset_seed=subset_seed, backend=backend, workers=workers)
    result = common.make_result(
        "finetune", f"finetune-{labels}", bb, ds, options, paper.settings_fields("finetune", options, settings_name),
        **curves.report(), notices=notices, num_train=labels, num_val=ds.manifest.count("val"),
        num_test=ds.manifest.count("test"), wall_clock_s=time.perf_counter() - t0,
        samples_per_s=seen / max(train_s, 1e-9), device=str(dev),
    )
    return common.finish(result, json_path, quiet)


def _announce(module, ds, dev, notices, quiet, *, labels, iters, batch, eval_every, res, runs) -> None:
    """The up-front CPU estimate (eval.budget): every training image costs TRAIN_PASSES passes, every
    evaluation one pass per val and test image."""
    evaluations = iters // eval_every + (iters % eval_every > 0)
    passes = budget.TRAIN_PASSES * iters * batch + evaluations * sum(ds.manifest.count(s) for s in ("val", "test"))
    message = budget.estimate(module, dev, res, f"fine-tuning on {labels} labels", passes,
                              "fewer --iters or a larger --eval-every is faster", runs)
    if message:
        notices.append(common.note(message, quiet))


def _with_head(backbone: nn.Module, num_features: int, num_classes: int, seed: int) -> nn.Sequential:
    """backbone -> a fresh linear head, N(0, 0.01) weights and zero bias (OpenSelfSup's ClsHead init),
    drawn under ``seed`` without touching the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(num_features, num_classes)
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    return nn.Sequential(backbone, head)
