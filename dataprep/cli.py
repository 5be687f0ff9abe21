"""`fasthpt prep`: command-line front end of dataprep.prepare (flags map one to one)."""

from __future__ import annotations

import argparse

from dataprep.prep import DEFAULT_SHARD_SIZE, DEFAULT_TEST_FRAC, DEFAULT_VAL_FRAC, prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--dataset", required=True,
      help="sat | sat-target | s2-target | natural (embedded, generated) or any NAME with --src")
    a("--src", default=None, help="folder with one sub-folder per class, or a .zip / .tar of one")
    a("--out", default="data", help="output root; the dataset goes to OUT/DATASET (default: data)")
    a("--formats", default=None,
      help="comma-separated subset of ffcv,wds (default: both, or wds alone where FFCV is not installed)")
    a("--val-frac", type=float, default=None,
      help=f"stratified validation fraction (default {DEFAULT_VAL_FRAC})")
    a("--test-frac", type=float, default=None,
      help=f"stratified test fraction (default {DEFAULT_TEST_FRAC}: HPT's 60/20/20; 0: no test split)")
    a("--splits", default=None, metavar="DIR",
      help="your own splits instead of the fractions: DIR/train.txt, val.txt and optional test.txt, "
           "one image per line (its path relative to --src, or a trailing part of it that names one "
           "image); images in no list are left out")
    a("--class-depth", type=int, default=None, metavar="N",
      help="the class is the first N folder levels below the shared root (CLASS/PATIENT/*.png: 1); "
           "default: the whole folder path (prep says when folders nest)")
    a("--seed", type=int, default=0, help="fixes the split, the sample order and generated images")
    a("--workers", type=int, default=None, help="decode/encode processes (default: all cores)")
    a("--num-images", type=int, default=None, help="embedded datasets: how many images")
    a("--image-size", type=int, default=None, help="embedded datasets: side in pixels")
    a("--max-res", type=int, default=256, help="longer side is shrunk to this (0: keep; default 256)")
    a("--jpeg-quality", type=int, default=90, help="JPEG quality of re-encoded images (default 90)")
    a("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
      help=f"samples per WebDataset shard (default {DEFAULT_SHARD_SIZE})")
    a("--band-names", default=None, metavar="NAMES",
      help="rasters: one name per band, comma-separated, e.g. B02,B03,B04,B08 (default: the files' own band "
           "descriptions, where they carry them)")
    a("--force", action="store_true",
      help="rebuild an existing output written by `fasthpt prep` (nothing else is ever deleted)")
    a("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    prepare(args.dataset, out=args.out, src=args.src, num_images=args.num_images,
            image_size=args.image_size, val_frac=args.val_frac, test_frac=args.test_frac,
            splits=args.splits, seed=args.seed,
            formats=args.formats, max_res=args.max_res, jpeg_quality=args.jpeg_quality,
            shard_size=args.shard_size, workers=args.workers, force=args.force,
            progress=not args.no_progress, band_names=args.band_names, class_depth=args.class_depth)
    return 0
