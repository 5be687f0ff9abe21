"""The `fasthpt` command: one subcommand per stage of the data flow.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported lazily so that `fasthpt --help` stays fast and a missing optional backend only
affects the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fasthpt.errors import UserError, clipped, interrupted_code

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prep": ("dataprep.cli", "convert an image dataset to FFCV .beton files and WebDataset shards"),
    "pretrain": ("fasthpt.pretrain", "MoCo-v2 / HPT pretraining from a YAML config (Composer)"),
    "eval": ("fasthpt.eval.cli", "evaluate a backbone (a run folder, a torch or safetensors checkpoint): kNN, "
             "linear probe, K-label fine-tuning"),
    "bench": ("fasthpt.benchmark.cli", "benchmark the data loaders and training throughput"),
    "demo": ("fasthpt.demo", "reproduce HPT's convergence experiment on the embedded data"),
    "export": ("fasthpt.export", "export a backbone for torchvision, timm, safetensors, TorchScript or ONNX, "
               "with its record"),
    "embed": ("fasthpt.embed", "pooled features of a folder of images or a prepared dataset (.npy/.parquet)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse quotes a bad value whole ("invalid int value: '...'"): a pasted file must not
    become the error line."""

    def error(self, message: str):
        super().error(clipped(message, 500))


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "this subcommand's module does not exist yet" is a not-built error; a missing
        # third-party dependency inside it must surface with its own name.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fasthpt",
        description="Fast Hierarchical PreTraining: self-supervised MoCo-v2 pretraining on a target "
        "domain, started from an existing model, with fast FFCV/DALI loading and Composer.",
    )
    from fasthpt import __version__

    parser.add_argument("--version", action="version", version=f"fasthpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / errors for unknown subcommands
        if args.command is None:
            parser.print_help()
            return 2
    name, rest = argv[0], argv[1:]
    module = _load(name)
    if module is None:
        print(f"fasthpt {name}: not built yet in this version of fasthpt", file=sys.stderr)
        return 2
    sub = _Parser(prog=f"fasthpt {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"fasthpt {name}: error: {clipped(str(exc))}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit) as exc:  # a run's Interrupted says where a relaunch resumes
        code = interrupted_code(exc)
        if code is None:  # sys.exit with another code: not an interruption
            raise
        said = str(exc) if isinstance(exc, KeyboardInterrupt) else ""
        print(f"fasthpt {name}: {said or 'interrupted'}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
