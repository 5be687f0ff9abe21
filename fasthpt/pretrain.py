"""`fasthpt pretrain CONFIG [key=value ...] [--nproc N]`: MoCo-v2 / HPT pretraining (Composer)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_duration=500ba")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes on this machine (>1 goes through Composer's launcher: `composer -n N`)")


def run(args: argparse.Namespace) -> int:
    from fasthpt.config import load_config

    cfg = load_config(args.config, args.overrides)  # strict: bad keys fail here, before any launch
    if args.nproc > 1:
        script = Path(__file__).with_name("train.py")
        cmd = [sys.executable, "-m", "composer.cli.launcher", "-n", str(args.nproc), str(script), args.config, *args.overrides]
        return subprocess.call(cmd)
    from fasthpt.train import pretrain

    result = pretrain(cfg)
    print(json.dumps(result, indent=1))
    return 0
