"""Thin argparse front ends for the `worldlab` subcommands.

Each module here defines `register(subparsers)` and keeps imports light until the command runs.
"""


def add_toggle_arguments(p) -> None:
    """--weights/--window/--kv with the allowed values and defaults of worldlab.config.Toggles."""
    from worldlab.config import TOGGLE_CHOICES, Toggles

    default = Toggles()
    for name, allowed in TOGGLE_CHOICES.items():
        p.add_argument(f"--{name}", default=getattr(default, name), choices=allowed)


def add_model_arguments(p, default: str = "tiny") -> None:
    """--model/--checkpoint/--device and the toggles: every command that builds a model takes these."""
    p.add_argument("--model", default=default, metavar="NAME|PATH|module:factory",
                   help=f"a registered model (`worldlab models`; default {default}), a checkpoint file, or an "
                        "importable factory")
    p.add_argument("--checkpoint", default=None, help="checkpoint for the model (default: the model's own)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when present)")
    p.add_argument("--cuda-graphs", default="on", choices=("on", "off"),
                   help="replay the steady step from a CUDA graph on CUDA (models that capture; default on)")
    add_toggle_arguments(p)


def build_model(args):
    """The WorldModel that --model/--checkpoint/--device/--weights/--window/--kv ask for; ValueError (one line)
    for an unknown model, a toggle it does not support, a missing checkpoint or an absent device."""
    from worldlab.config import Toggles
    from worldlab.model.registry import resolve, resolve_device

    plugin = resolve(args.model)
    toggles = Toggles(args.weights, args.window, args.kv)
    plugin.check(toggles)  # before a device or checkpoint is looked at
    if getattr(args, "cuda_graphs", "on") == "off":  # process-wide: toggle variants built later honour it too
        import os

        from worldlab.model.cuda_graphs import ENV_FLAG

        os.environ[ENV_FLAG] = "0"
    return plugin.build(toggles, resolve_device(args.device), args.checkpoint)


def threads_arg(text: str) -> int:
    """argparse type for --threads: an integer >= 1 (argparse turns the error into one usage line)."""
    import argparse

    from worldlab.threads import check

    try:
        return check(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
