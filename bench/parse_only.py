"""Parse a `fasthpt` command line as `fasthpt` would, run nothing: the dry run of bench/gpu_check.sh.

A flag renamed or removed in a subcommand fails here, on the CPU, rather than on a GPU machine
drawn by chance. `bench train` goes one step further and builds each row's run config (the
``key=value`` overrides and the config keys it sets itself), which is where a stale key would fail.

    python bench/parse_only.py bench loaders --data d --res 224      # exit 0, or 2 with the error
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fasthpt import cli  # noqa: E402 (after the sys.path line)
from fasthpt.errors import UserError  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    """The parser `fasthpt.cli.main` builds for ``argv[0]``, applied to the rest."""
    if not argv or argv[0] not in cli.COMMANDS:
        raise UserError(f"not a fasthpt subcommand: {argv[:1]}; valid: {', '.join(cli.COMMANDS)}")
    module = cli._load(argv[0])
    if module is None:
        raise UserError(f"fasthpt {argv[0]} is not built in this version")
    sub = argparse.ArgumentParser(prog=f"fasthpt {argv[0]}", description=cli.COMMANDS[argv[0]][1])
    module.add_arguments(sub)
    return sub.parse_args(argv[1:])


def check_train_rows(args: argparse.Namespace) -> int:
    """Each row's config, as `fasthpt bench train` builds it (strict: unknown or bad keys fail)."""
    from fasthpt.benchmark import training

    rows = training.planned_rows(args)
    with tempfile.TemporaryDirectory(prefix="fasthpt-parse-") as tmp:
        for backend, algorithms in rows:
            training.row_config(args, backend, algorithms, tmp)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
        rows = check_train_rows(args) if argv[:2] == ["bench", "train"] else None
    except UserError as exc:
        print(f"parse_only: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"parsed": {k: str(v) for k, v in vars(args).items()},
                      **({"train_rows": rows} if rows is not None else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
