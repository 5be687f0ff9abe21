"""`fasthpt eval knn|linear|finetune --backbone PATH --data DIR [options] [--json FILE]`.

Each run prints a one-line summary and appends one JSON object to --json.
"""

from __future__ import annotations

import argparse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True,
                   help="checkpoint (fasthpt backbone.pt, torchvision state_dict, MoCo release, Composer "
                   "checkpoint) or 'random' (random init: the floor)")
    p.add_argument("--data", required=True, help="a folder written by `fasthpt prep` (holds manifest.json)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling of a --backbone file that holds more than tensors: it runs "
                   "any code the file names, so only for files from a source you trust")
    p.add_argument("--arch", default=None,
                   help="architecture (resnet_tiny, resnet18, resnet50): needed for 'random', else checked")
    p.add_argument("--res", type=int, default=64, help="eval side: resize + center crop to RES (default 64)")
    p.add_argument("--batch-size", type=int, default=None, help="per step (default: 256, finetune 64)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", default="auto", choices=("auto", "ffcv", "dali", "torch"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (bf16 autocast on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE", help="append one JSON result line to FILE")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default DATA/.cache/features, else ~/.cache/fasthpt/features)")
    p.add_argument("--no-cache", action="store_true", help="always re-extract features, write no cache")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    knn = sub.add_parser("knn", help="weighted cosine kNN on frozen pooled features (train -> val)")
    _common(knn)
    _cache(knn)
    knn.add_argument("--k", type=int, default=20, help="neighbours (default 20)")
    knn.add_argument("--t", type=float, default=0.07, help="temperature of the exp(sim / t) votes (default 0.07)")

    lin = sub.add_parser("linear", help="linear probe on the frozen backbone (paper recipe, scaled)")
    _common(lin)
    _cache(lin)
    lin.add_argument("--iters", type=int, default=300, help="SGD iterations (paper: 5000; default 300 for CPU)")
    lin.add_argument("--lr", type=float, default=30.0, help="lr for a batch of 512, scaled linearly (paper: 30)")
    lin.add_argument("--eval-every", type=int, default=None, help="validate every N iterations (default iters/10)")
    lin.add_argument("--precomputed", action="store_true",
                     help="fast mode: train on cached center-crop features, no augmentation")

    ft = sub.add_parser("finetune", help="fine-tune the whole network on K labelled images")
    _common(ft)
    ft.add_argument("--labels", type=int, default=1000, help="K labelled train images, stratified (paper: 1000)")
    ft.add_argument("--iters", type=int, default=100, help="optimizer steps (default 100)")
    ft.add_argument("--lr", type=float, default=0.01, help="backbone lr (paper: 0.01 or 0.001)")
    ft.add_argument("--head-mult", type=float, default=100.0, help="head lr multiplier (paper: 100)")
    ft.add_argument("--effective-batch", type=int, default=256,
                    help="images per optimizer step, by gradient accumulation (paper: 256)")
    ft.add_argument("--eval-every", type=int, default=None, help="validate every N steps (default iters/5)")


def run(args: argparse.Namespace) -> int:
    shared = dict(arch=args.arch, res=args.res, workers=args.workers, backend=args.backend, device=args.device,
                  seed=args.seed, json_path=args.json, progress=not args.no_progress, trust=args.trust_checkpoint)
    if args.protocol == "knn":
        from fasthpt.eval.knn import run_knn

        run_knn(args.backbone, args.data, k=args.k, t=args.t, batch_size=args.batch_size or 256,
                cache_dir=args.cache_dir, use_cache=not args.no_cache, **shared)
    elif args.protocol == "linear":
        from fasthpt.eval.linear import run_linear

        run_linear(args.backbone, args.data, iters=args.iters, lr=args.lr, eval_every=args.eval_every,
                   precomputed=args.precomputed, batch_size=args.batch_size or 256,
                   cache_dir=args.cache_dir, use_cache=not args.no_cache, **shared)
    else:
        from fasthpt.eval.finetune import run_finetune

        run_finetune(args.backbone, args.data, labels=args.labels, iters=args.iters, lr=args.lr,
                     head_mult=args.head_mult, effective_batch=args.effective_batch,
                     eval_every=args.eval_every, batch_size=args.batch_size or 64, **shared)
    return 0
