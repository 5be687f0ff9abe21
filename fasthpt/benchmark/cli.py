"""`fasthpt bench loaders|train ...`: dispatch to one benchmark module each."""

from __future__ import annotations

import argparse
import importlib

KINDS = {
    "loaders": ("fasthpt.benchmark.loaders", "two-view loader throughput per backend (+ decode ceiling)"),
    "train": ("fasthpt.benchmark.training", "training throughput and data-stall per backend / algorithm set"),
    "plot": ("fasthpt.benchmark.plots", "bar charts of the loader and training benchmark results"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, (module, help_text) in KINDS.items():
        p = sub.add_parser(kind, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(KINDS[args.kind][0]).run(args)
