"""Thin argparse front ends for the `worldlab` subcommands.

Each module here defines `register(subparsers)` and keeps imports light until the command runs.
"""


def add_toggle_arguments(p) -> None:
    """--weights/--window/--kv with the allowed values and defaults of worldlab.config.Toggles."""
    from worldlab.config import TOGGLE_CHOICES, Toggles

    default = Toggles()
    for name, allowed in TOGGLE_CHOICES.items():
        p.add_argument(f"--{name}", default=getattr(default, name), choices=allowed)
