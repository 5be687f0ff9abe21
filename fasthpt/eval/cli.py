"""`fasthpt eval knn|linear|finetune --backbone PATH --data DIR [options] [--json FILE]`.

Defaults are the paper's settings (eval.paper). Each run selects on val and reports test, prints a
one-line summary and appends one JSON object to --json; with --seeds N, one line per seed and a
summary line (mean, std, 95% interval).
"""

from __future__ import annotations

import argparse

from fasthpt.config import ARCH_NAMES
from fasthpt.data import BACKEND_CHOICES


def _common(p: argparse.ArgumentParser, batch: int) -> None:
    p.add_argument("--backbone", required=True,
                   help="a run folder (runs/<name>: its backbone.pt), a checkpoint (fasthpt backbone.pt, torchvision "
                   "or timm state_dict, .safetensors, MoCo release, Composer checkpoint) or 'random' (random init: "
                   "the floor)")
    p.add_argument("--data", required=True,
                   help="a folder written by `fasthpt prep` with train, val and test splits (holds manifest.json)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling of a --backbone file that holds more than tensors: it runs "
                   "any code the file names, so only for files from a source you trust")
    p.add_argument("--arch", default=None,
                   help=f"architecture ({', '.join(ARCH_NAMES)}): needed for 'random', else checked")
    p.add_argument("--res", type=_positive, default=224,
                   help="eval side: resize to RES*256/224 + center crop RES; train crops are RES (paper: 224)")
    p.add_argument("--batch-size", type=int, default=batch, help=f"per step (default {batch})")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (bf16 autocast on CUDA)")
    p.add_argument("--seed", type=int, default=0,
                   help="head init, batch order and augmentation (and the init of 'random') (default 0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat with seeds SEED, SEED+1, ...: one JSON line each plus a summary line (mean, std, "
                   "Student-t 95%% interval)")
    p.add_argument("--settings-name", default=None,
                   help="name these settings in the result (default: 'paper' at the paper's settings, else 'custom')")
    p.add_argument("--json", default=None, metavar="FILE", help="append one JSON result line to FILE")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default DATA/.cache/features, else ~/.cache/fasthpt/features)")
    p.add_argument("--no-cache", action="store_true", help="always re-extract features, write no cache")


def _positive(text: str) -> int:
    """A positive integer (argparse type): --res 0 has no pixels to resize to."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels, got {text!r}")
    return value


def _numbers(kind):
    """A comma-separated list of ``kind`` values (argparse type)."""

    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fasthpt.eval.knn import K_GRID, T_GRID

    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    knn = sub.add_parser("knn", help="weighted cosine kNN on frozen pooled features: (k, t) chosen on val, test "
                         "reported")
    _common(knn, 256)
    _cache(knn)
    knn.add_argument("--k", type=_numbers(int), default=None,
                     help=f"neighbours, one value or a comma list chosen on val (default {','.join(map(str, K_GRID))})")
    knn.add_argument("--t", type=_numbers(float), default=None,
                     help=f"temperature of the exp(sim / t) votes, one value or a list chosen on val "
                     f"(default {','.join(map(str, T_GRID))})")

    lin = sub.add_parser("linear", help="linear probe on the frozen backbone (the paper's recipe)")
    _common(lin, 512)
    _cache(lin)
    lin.add_argument("--iters", type=int, default=5000, help="SGD iterations (paper: 5000)")
    lin.add_argument("--lr", type=float, default=30.0, help="lr for a batch of 512, scaled linearly (paper: 30)")
    lin.add_argument("--eval-every", type=int, default=100,
                     help="evaluate val and test every N iterations, and at 0 (paper: 100)")
    lin.add_argument("--precomputed", action="store_true",
                     help="fast mode: train on cached center-crop features, no augmentation")

    ft = sub.add_parser("finetune", help="fine-tune the whole network on K labelled images (the paper's recipe)")
    _common(ft, 64)
    ft.add_argument("--labels", type=int, default=None,
                    help="K labelled train images, stratified (paper: 1000; with --labels-file: its count)")
    ft.add_argument("--labels-file", default=None, metavar="FILE",
                    help="the K labelled images as the authors list them (train-labeled-1000.txt: one 'PATH LABEL' "
                    "per line, PATH below their data root, e.g. all/airport/airport_001.jpg), instead of a "
                    "stratified draw")
    ft.add_argument("--subset-seed", type=int, default=0,
                    help="seed of the K-image subset, the same for every --seeds run (default 0)")
    ft.add_argument("--iters", type=int, default=2500,
                    help="optimizer updates (paper: 2500, which the authors' runner trains as 2500 x 4 = 10,000 "
                    "batches)")
    ft.add_argument("--accum-steps", type=int, default=4,
                    help="batches per optimizer update (paper: 4, i.e. 64 x 4 = 256 images per update)")
    ft.add_argument("--lr", type=float, default=0.01,
                    help="backbone lr, x0.1 after batches round(ITERS/3) and round(2*ITERS/3) (paper: 0.01 or "
                    "0.001; steps 833 and 1667)")
    ft.add_argument("--head-mult", type=float, default=100.0, help="head lr multiplier (paper: 100)")
    ft.add_argument("--eval-every", type=int, default=100,
                    help="evaluate val and test every N batches (paper: 100, counted in batches as the authors' "
                    "hooks count them)")

def run(args: argparse.Namespace) -> int:
    from fasthpt.eval.seeds import run_seeds

    shared = dict(arch=args.arch, res=args.res, batch_size=args.batch_size, workers=args.workers,
                  backend=args.backend, device=args.device, progress=not args.no_progress,
                  trust=args.trust_checkpoint, settings_name=args.settings_name)
    series = dict(seed=args.seed, seeds=args.seeds, json_path=args.json)
    if args.protocol == "knn":
        from fasthpt.eval.knn import run_knn

        run_seeds(run_knn, args.backbone, args.data, k=args.k, t=args.t, cache_dir=args.cache_dir,
                  use_cache=not args.no_cache, **series, **shared)
    elif args.protocol == "linear":
        from fasthpt.eval.linear import run_linear

        run_seeds(run_linear, args.backbone, args.data, iters=args.iters, lr=args.lr, eval_every=args.eval_every,
                  precomputed=args.precomputed, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                  **series, **shared)
    else:
        from fasthpt.eval.finetune import run_finetune

        run_seeds(run_finetune, args.backbone, args.data, labels=args.labels, labels_file=args.labels_file,
                  subset_seed=args.subset_seed,
                  iters=args.iters, accum_steps=args.accum_steps, lr=args.lr, head_mult=args.head_mult,
                  eval_every=args.eval_every, **series, **shared)
    return 0
