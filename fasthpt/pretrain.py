"""`fasthpt pretrain CONFIG [key=value ...] [--nproc N]`: MoCo-v2 / HPT pretraining (Composer)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (see configs/)")
    # REMAINDER: overrides and --nproc may come in any order after CONFIG (plain nargs="*" would
    # stop at the first option and reject overrides after it).
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                        help="config overrides, e.g. train.max_duration=500ba")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes on this machine (>1 goes through Composer's launcher: `composer -n N`)")


def _split_nproc(items: list[str], nproc: int) -> tuple[list[str], int]:
    """Take ``--nproc N`` / ``--nproc=N`` out of the override list."""
    from fasthpt.errors import UserError, shown

    rest, i = [], 0
    while i < len(items):
        item = items[i]
        if item == "--nproc" or item.startswith("--nproc="):
            value = item.partition("=")[2] if "=" in item else (items[i + 1] if i + 1 < len(items) else "")
            i += 1 if "=" in item else 2
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"--nproc needs a positive integer, got {shown(value)}")
            nproc = int(value)
            continue
        rest.append(item)
        i += 1
    return rest, nproc


def run(args: argparse.Namespace) -> int:
    import logging

    from fasthpt.config import check_queue, load_config, per_process

    # fasthpt's own INFO lines (base import report, kNN monitor, resume) on the console
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.overrides, args.nproc = _split_nproc(list(args.overrides), args.nproc)
    cfg = load_config(args.config, args.overrides)  # strict: bad keys fail here, before any launch
    if args.nproc > 1:
        # before the launch (each rank checks again with the whole world size): a global batch the
        # process count does not divide, a queue shorter than the global batch
        check_queue(per_process(cfg, args.nproc), args.nproc)
        script = Path(__file__).with_name("train.py")
        cmd = [sys.executable, "-m", "composer.cli.launcher", "-n", str(args.nproc), str(script), args.config,
               *args.overrides]
        launcher = subprocess.Popen(cmd)
        try:
            return launcher.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the launcher and its ranks too (one process group): rank 0 prints where
            # the run resumes and the launcher returns its exit code (130); killing it here, as
            # subprocess.call would, would leave the ranks without their launcher's cleanup.
            return launcher.wait()
    from fasthpt.fileio import printable_json
    from fasthpt.train import pretrain

    result = pretrain(cfg)
    print(printable_json(result, indent=1))
    return 0
