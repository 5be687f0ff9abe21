"""K-label fine-tuning (HPT's semi-supervised protocol): the whole network, K labelled images.

Recipe: the authors' finetune/1000-labels configs (eval.paper): SGD momentum 0.9, weight decay 0,
lr 0.01 (or 0.001) for the backbone and x100 for the linear head, batch 64 with an update every 4
batches (256 images per update), BatchNorm in train mode; train views RandomResizedCrop + flip of
the whole image (the labelled loader of fasthpt.data over the K images), val and test resize +
center crop. The reported ``top1`` is test at the best val point of the second half
(eval.selection).

The schedule counts what the authors' runner counts (``Schedule``): their config says
total_iters=2500 with update_interval=4, and OpenSelfSup's train_model multiplies total_iters by
update_interval (OpenSelfSup/openselfsup/apis/train.py, lines 98-102), so the run is 10,000
batches = 2,500 optimizer updates. Their lr steps (step=[833, 1667]) and their val / test hooks
(interval=100, initial=False) are read by mmcv's hooks against runner.iter, which counts batches: the
lr drops x0.1 after batch 833 and again after batch 1667, and val and test are evaluated after
every 100th batch (100 evaluations; the selection window is evaluations 52..100, batches
5,200..10,000, all at the last lr). Here ``iters`` is the updates (their total_iters),
``accum_steps`` their update_interval, ``eval_every`` in batches, and the lr steps at
round(iters / 3) and round(2 * iters / 3) batches, the rule that gives their 833 and 1667.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fasthpt.errors import UserError
from fasthpt.eval import common, paper
from fasthpt.eval.selection import Curves

LR_GAMMA = 0.1  # the authors' finetune/1000-labels configs: lr_config gamma 0.1
PAPER_LABELS = 1000  # their finetune/1000-labels: train-labeled-1000.txt
# A training image costs about three forward passes: the backward pass costs about twice the forward
# (the usual 2:1 rule, e.g. Kaplan et al. 2020, "Scaling laws for neural language models", sec. 2.1).
TRAIN_PASSES = 3


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


@dataclass(frozen=True)
class Schedule:
    """The fine-tuning schedule, in the authors' units (module doc): ``iters`` optimizer updates of
    ``accum_steps`` batches each; lr steps and evaluations counted in batches."""

    iters: int  # optimizer updates (the authors' total_iters)
    accum_steps: int  # batches per update (the authors' update_interval)
    eval_every: int  # batches between evaluations (the authors' ValidateHook interval)

    @property
    def batches(self) -> int:
        return self.iters * self.accum_steps

    @property
    def lr_steps(self) -> tuple[int, ...]:
        """Batch counts after which the lr drops by LR_GAMMA: 1/3 and 2/3 of ``iters``, rounded
        (2,500 -> 833, 1667: the authors' step=[833,1667]), read against batches as their runner does."""
        return tuple(s for s in (round(self.iters / 3), round(2 * self.iters / 3)) if s > 0)

    def lr_factor(self, batch: int) -> float:
        """The lr multiplier of batch ``batch`` (1-based): mmcv's StepLrUpdaterHook sets it before the
        batch from runner.iter = batch - 1."""
        return LR_GAMMA ** sum(batch - 1 >= s for s in self.lr_steps)

    def updates_after(self, batch: int) -> bool:
        return batch % self.accum_steps == 0

    def evaluates_after(self, batch: int) -> bool:
        """Every ``eval_every`` batches (the authors' hooks); also after the last batch, which at their
        settings is one of those (a shorter run is then evaluated at least once)."""
        return batch % self.eval_every == 0 or batch == self.batches

    @property
    def eval_points(self) -> list[int]:
        return [b for b in range(1, self.batches + 1) if self.evaluates_after(b)]


@dataclass
class Trained:
    """What ``finetune`` did, counted as it happened (not derived from the schedule)."""

    curves: Curves
    train_s: float
    samples: int
    batches: int
    updates: int


def finetune(
    model: nn.Module, opt: torch.optim.Optimizer, batches: Iterator, evals: dict, schedule: Schedule, *, device,
    progress: bool = False, forecast=None,
) -> Trained:
    """Train ``model`` (backbone + head, BatchNorm in train mode) on ``schedule.batches`` batches, an
    optimizer update after every ``accum_steps`` of them (the loss divided by it, as the authors'
    optimizer hook does), the lr set per batch by ``schedule.lr_factor`` from each group's base_lr;
    ``evals`` ({"val": loader, "test": loader}) after the batches ``schedule.evaluates_after`` names.
    ``forecast`` (fasthpt.forecast.Forecast, in image passes) is told of each batch done."""
    done = Trained(Curves(), 0.0, 0, 0, 0)
    model.train()
    steps = range(1, schedule.batches + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="fine-tune", unit="batch", leave=False)
    opt.zero_grad(set_to_none=True)
    for b in steps:
        t = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * schedule.lr_factor(b)
        x, y = next(batches)
        with common.autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y.to(device)) / schedule.accum_steps
        loss.backward()
        done.samples += len(y)
        done.batches += 1
        if schedule.updates_after(b):
            opt.step()
            opt.zero_grad(set_to_none=True)
            done.updates += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        done.train_s += time.perf_counter() - t
        if forecast is not None:
            forecast.tick(TRAIN_PASSES * len(y))
        if schedule.evaluates_after(b):
            done.curves.add(b, evaluate(model, evals["val"], device), evaluate(model, evals["test"], device))
            if progress:
                steps.set_postfix(loss=f"{loss.item() * schedule.accum_steps:.3f}", val=f"{done.curves.val[-1]:.3f}")
    return done


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


def listed_subset(ds, path) -> tuple[torch.Tensor, dict]:
    """Sample indices of the train images a list file names (eval.label_list), and what the result
    records of the list."""
    from fasthpt.eval.label_list import list_indices, read_label_list

    listed = read_label_list(path)
    samples = {s: ds.manifest.sample_names(s) for s in ds.manifest.split_names}
    return list_indices(listed, samples), {"labels_file": str(path), "labels_file_sha256": listed.sha256}


def choose_subset(ds, labels: int | None, labels_file, subset_seed: int) -> tuple[torch.Tensor, dict]:
    """The K labelled images: those ``labels_file`` names, else ``labels`` (default 1000) drawn
    stratified with ``subset_seed``. Returns (indices, the options that say how they were chosen)."""
    if labels_file is None:
        k = PAPER_LABELS if labels is None else labels
        return labelled_subset(ds, k, subset_seed), {"subset": "stratified", "subset_seed": subset_seed}
    subset, how = listed_subset(ds, labels_file)
    if labels is not None and labels != len(subset):
        raise UserError(f"--labels {labels} but --labels-file {labels_file} lists {len(subset)} images; "
                        "give one of them")
    return subset, {"subset": "list", **how}


def run_finetune(
    backbone, data, *, labels: int | None = None, labels_file=None, arch: str | None = None, iters: int = 2500,
    batch_size: int = 64, accum_steps: int = 4, lr: float = 0.01, head_mult: float = 100.0, eval_every: int = 100,
    res: int = 224, workers: int = 2, backend: str = "auto", device="auto", seed: int = 0, subset_seed: int = 0,
    json_path=None, progress: bool = True, quiet: bool = False, trust: bool = False,
    settings_name: str | None = None, estimate_runs: int = 1,
) -> dict:
    """Fine-tune ``backbone`` (path / spec / nn.Module; an in-memory module is copied, never changed)
    on K train images of ``data``: those ``labels_file`` names (the authors' list), else ``labels``
    (default 1000) drawn stratified with ``subset_seed`` (the same subset for every ``seed``, as the
    authors' one list). ``iters`` optimizer updates of ``accum_steps`` batches each, lr steps and
    evaluations counted in batches (``Schedule``). Returns the result dict."""
    t0 = time.perf_counter()
    if min(iters, batch_size, accum_steps, eval_every) < 1 or lr <= 0:
        raise UserError("--iters, --batch-size, --accum-steps, --eval-every and --lr must be positive")
    common.check_outputs(json_path)
    ds = common.resolve_protocol_data(data)
    subset, chosen = choose_subset(ds, labels, labels_file, subset_seed)
    k = len(subset)
    bb = common.resolve_backbone(backbone, arch, seed, trust, data=ds)
    dev = common.module_device(bb, device)
    work = bb
    if bb.source == common.IN_MEMORY:  # fine-tune a copy: the caller's model stays as it was
        work = common.Backbone(copy.deepcopy(bb.module), "<copy>", bb.fingerprint, bb.arch)
    module = common.place(work, dev)
    notices = []
    batch = common.clamp_batch(batch_size, k, "labelled images", notices, quiet)
    schedule = Schedule(iters, accum_steps, eval_every)
    forecast = _forecast(ds, dev, notices, quiet, k, schedule, batch, estimate_runs)
    evals = {s: common.eval_loader(ds, s, res, batch, workers, dev, backend) for s in ("val", "test")}
    model = _with_head(module, bb.num_features, ds.manifest.num_classes, seed).to(dev)
    opt = make_optimizer(module, model[1], lr, head_mult)
    batches = common.labelled_batches(ds, res=res, batch_size=batch, workers=workers, device=dev, backend=backend,
                                      seed=seed, indices=subset)
    done = finetune(model, opt, batches, evals, schedule, device=dev, progress=progress, forecast=forecast)
    options = dict(labels=k, iters=iters, batch_size=batch, batch_size_requested=batch_size,
                   accum_steps=accum_steps, images_per_update=batch * accum_steps, batches=done.batches,
                   updates=done.updates, lr_steps=list(schedule.lr_steps), lr=lr, head_mult=head_mult,
                   eval_every=eval_every, res=res, seed=seed, **chosen, backend=backend, workers=workers)
    result = common.make_result(
        "finetune", f"finetune-{k}", bb, ds, options, paper.settings_fields("finetune", options, settings_name),
        **done.curves.report(), curve_unit="batches", notices=notices, num_train=k,
        num_val=ds.manifest.count("val"), num_test=ds.manifest.count("test"), wall_clock_s=time.perf_counter() - t0,
        samples_per_s=done.samples / max(done.train_s, 1e-9), device=str(dev),
    )
    return common.finish(result, json_path, quiet)


def _forecast(ds, dev, notices, quiet, k, schedule: Schedule, batch: int, runs: int):
    """The run's cost in image passes (every training image TRAIN_PASSES, every evaluated val and
    test image one), timed on its first batches (fasthpt.forecast)."""
    evaluated = len(schedule.eval_points) * sum(ds.manifest.count(s) for s in ("val", "test"))
    passes = TRAIN_PASSES * schedule.batches * batch + evaluated
    return common.forecast(f"this fine-tuning on {k} labels", passes, dev, notices, quiet, runs,
                           hint="fewer --iters, a larger --eval-every, or a GPU")


def _with_head(backbone: nn.Module, num_features: int, num_classes: int, seed: int) -> nn.Sequential:
    """backbone -> a fresh linear head, N(0, 0.01) weights and zero bias (OpenSelfSup's ClsHead init),
    drawn under ``seed`` without touching the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(num_features, num_classes)
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    return nn.Sequential(backbone, head)
