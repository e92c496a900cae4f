"""`worldlab lab`: start JupyterLab with notebooks/01_quickstart.ipynb open (the main job).

Token auth stays on unless the user passes --no-token, which also pins the server to 127.0.0.1. --model and
--device reach the quickstart's model cell through WORLDLAB_MODEL / WORLDLAB_DEVICE in the kernels' environment.
"""

from __future__ import annotations

import os
import pathlib
import sys

QUICKSTART = "notebooks/01_quickstart.ipynb"
MODEL_ENV = {"model": "WORLDLAB_MODEL", "device": "WORLDLAB_DEVICE"}  # read by the quickstart's model cell


def find_quickstart() -> pathlib.Path:
    """The quickstart in the current directory's checkout, else in the checkout worldlab runs from."""
    for root in (pathlib.Path.cwd(), pathlib.Path(__file__).resolve().parents[2]):
        if (root / QUICKSTART).is_file():
            return root / QUICKSTART
    raise FileNotFoundError(f"{QUICKSTART} not found in {pathlib.Path.cwd()} or the worldlab checkout")


def lab_argv(args, notebook: pathlib.Path) -> list[str]:
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    root = notebook.parents[1]
    argv = [sys.executable, "-m", "jupyter", "lab", str(notebook.relative_to(root)),
            f"--ServerApp.root_dir={root}", f"--port={args.port}", f"--ServerApp.ip={args.host}"]
    if args.no_browser:
        argv.append("--no-browser")
    if args.no_token:
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"--no-token is only allowed on loopback, not --host {args.host}")
        argv += ["--IdentityProvider.token=", "--ServerApp.password="]
    if os.geteuid() == 0:
        argv.append("--allow-root")  # containers and CI run as root
    return argv


def register(sub) -> None:
    p = sub.add_parser("lab", help="start JupyterLab on the quickstart notebook (the main job)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8888)
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--no-token", action="store_true", help="no token prompt (loopback only; you asked for it)")
    p.add_argument("--model", default=None, metavar="NAME|PATH|module:factory",
                   help="the quickstart's model (`worldlab models`; default tiny)")
    p.add_argument("--device", default=None, help="the quickstart's device: auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--dry-run", action="store_true", help="print the jupyter command instead of running it")
    p.set_defaults(func=run)


def model_env(args) -> dict[str, str]:
    """WORLDLAB_MODEL / WORLDLAB_DEVICE for the kernels, checked here so a typo is one line, not a failed cell."""
    from worldlab.model.registry import resolve, resolve_device

    env = {}
    if args.model is not None:
        resolve(args.model)
        env[MODEL_ENV["model"]] = args.model
    if args.device is not None:
        resolve_device(args.device)
        env[MODEL_ENV["device"]] = args.device
    return env


def run(args) -> int:
    argv = lab_argv(args, find_quickstart())
    env = model_env(args)
    if args.dry_run:
        print(" ".join([*(f"{k}={v}" for k, v in env.items()), *argv]))
        return 0
    os.environ.update(env)
    os.execv(argv[0], argv)  # hand the terminal (and Ctrl-C) to JupyterLab itself
    return 0
