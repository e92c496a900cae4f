"""`worldlab serve` as a subprocess for the benchmarks: a free loopback port, its keys and records in a
work directory, an optional --config file; yields (base url, psutil.Process) and always stops it."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import psutil

from benchmarks.browser import free_port, running


@contextlib.contextmanager
def serving(workdir: str, model: str = "oracle", config: dict | None = None, extra_args=()):
    args = []
    if config is not None:
        cfg_path = os.path.join(workdir, "serve-config.json")
        with open(cfg_path, "w") as f:
            json.dump(config, f)
        args = ["--config", cfg_path]
    port = free_port()
    argv = [sys.executable, "-m", "worldlab.cli", "serve", "--model", model, "--port", str(port), "--no-triage",
            "--records", os.path.join(workdir, "records"), *args, *extra_args]
    env = {**os.environ, "XDG_CONFIG_HOME": workdir}
    with running(argv, port, os.path.join(workdir, "serve.log"), env=env, timeout=120.0) as proc:
        yield f"http://127.0.0.1:{port}", psutil.Process(proc.pid)
