"""Helpers shared by the browser tests: Debian chromium through Playwright, free loopback ports, servers
that are always stopped.

Playwright cannot download its own browser here; /usr/bin/chromium is installed by `make test`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def have_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def running(argv: list[str], port: int, log_path: str, env: dict | None = None, cwd: str | None = None):
    """Start a server subprocess, wait for its port, and always stop it (then kill if it lingers)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            wait_for_port(port, proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def jupyter_lab_on_quickstart(work, token: str, model: str):
    """JupyterLab on a free loopback port serving a copy of the quickstart whose model is `model`
    ("tiny" or "oracle"); yields the base URL and always stops the server."""
    import json
    import pathlib
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    work = pathlib.Path(work)
    nb = json.loads((root / "notebooks" / "01_quickstart.ipynb").read_text())
    src = "".join(nb["cells"][1]["source"])
    nb["cells"][1]["source"] = src.replace('model_name = "tiny"', f'model_name = "{model}"')
    (work / "01_quickstart.ipynb").write_text(json.dumps(nb))
    port = free_port()
    argv = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--expose-app-in-browser",
            "--LabApp.news_url=", "--LabServerApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    envvars = {**os.environ, "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    with running(argv, port, str(work / "lab.log"), env=envvars):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def chromium_browser(playwright):
    profile = tempfile.mkdtemp(prefix="worldlab-chromium-")
    try:
        ctx = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def video_pixels(page, selector: str, size: int = 64):
    """The picture in a <video> scaled back to the native size (size, size, 3) uint8, read in the page."""
    import numpy as np

    data = page.evaluate("""([sel, n]) => {
      const v = document.querySelector(sel);
      const c = document.createElement('canvas'); c.width = n; c.height = n;
      const g = c.getContext('2d'); g.imageSmoothingEnabled = false; g.drawImage(v, 0, 0, n, n);
      return Array.from(g.getImageData(0, 0, n, n).data);
    }""", [selector, size])
    return np.array(data, dtype=np.uint8).reshape(size, size, 4)[..., :3]
