"""The `worldlab` console script: one subcommand per capability.

Each command module exposes `register(subparsers)`; heavy imports stay inside the command's run function
so that `worldlab --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that register subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "worldlab.commands.lab_cmd",
    "worldlab.commands.serve_cmd",
    "worldlab.commands.ops_cmds",
    "worldlab.commands.token_cmd",
    "worldlab.commands.model_cmds",
    "worldlab.commands.kernels_cmd",
    "worldlab.commands.sweep_cmd",
    "worldlab.commands.experiment_cmds",
    "worldlab.commands.verify_cmd",
    "worldlab.commands.triage_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldlab",
        description="Real-time interactive video world models: train, evaluate, quantize, stream.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # Bad input is reported as one clear line, not a traceback.
        print(f"worldlab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
