"""`worldlab serve` as a subprocess for the benchmarks: a free loopback port, its keys and records in a
work directory, an optional --config file; yields (base url, psutil.Process) and always stops it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil


@contextlib.contextmanager
def serving(workdir: str, model: str = "oracle", config: dict | None = None):
    args = []
    if config is not None:
        cfg_path = os.path.join(workdir, "serve-config.json")
        with open(cfg_path, "w") as f:
            json.dump(config, f)
        args = ["--config", cfg_path]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = os.path.join(workdir, "serve.log")
    argv = [sys.executable, "-m", "worldlab.cli", "serve", "--model", model, "--port", str(port), "--no-triage",
            "--records", os.path.join(workdir, "records"), *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "XDG_CONFIG_HOME": workdir})
    try:
        _wait_listening(port, proc, log_path)
        yield f"http://127.0.0.1:{port}", psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)  # SIGTERM drains for up to drain_deadline_s; SIGINT stops now
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_listening(port: int, proc: subprocess.Popen, log_path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"worldlab serve is not listening on {port}; log tail:\n{open(log_path).read()[-2000:]}")
