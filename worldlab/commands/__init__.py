"""Thin argparse front ends for the `worldlab` subcommands.

Each module here defines `register(subparsers)` and keeps imports light until the command runs.
"""


def add_toggle_arguments(p) -> None:
    """--weights/--window/--kv with the allowed values and defaults of worldlab.config.Toggles."""
    from worldlab.config import TOGGLE_CHOICES, Toggles

    default = Toggles()
    for name, allowed in TOGGLE_CHOICES.items():
        p.add_argument(f"--{name}", default=getattr(default, name), choices=allowed)


def threads_arg(text: str) -> int:
    """argparse type for --threads: an integer >= 1 (argparse turns the error into one usage line)."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n
