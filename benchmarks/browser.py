"""Debian Chromium through Playwright, free loopback ports and servers that are always stopped, for the
benchmarks and (via tests/browser_support) the browser tests: one definition of each. Playwright cannot
download its own browser here; `make test` installs /usr/bin/chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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


@contextlib.contextmanager
def chromium_browser(playwright, host_map: str | None = None):
    """A headless persistent context on a throwaway profile (always removed).
    host_map: a host name the browser resolves to 127.0.0.1 (a "remote" server that is really local)."""
    profile = tempfile.mkdtemp(prefix="worldlab-chromium-")
    args = CHROMIUM_ARGS + ([f"--host-resolver-rules=MAP {host_map} 127.0.0.1"] if host_map else [])
    try:
        ctx = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=args,
            viewport={"width": 1280, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


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
def running(argv: list[str], port: int, log_path: str, env: dict | None = None, cwd: str | None = None,
            timeout: float = 60.0, stop: signal.Signals = signal.SIGINT):
    """Start a server subprocess, wait (up to `timeout` s) for its port, and always stop it with `stop` (then
    kill if it lingers)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            try:
                wait_for_port(port, proc, timeout)
            except (RuntimeError, TimeoutError) as exc:  # say why: the server's last words
                raise RuntimeError(f"{exc}; log tail:\n{open(log_path).read()[-2000:]}") from None
            yield proc
        finally:
            proc.send_signal(stop)  # serve: SIGTERM drains for up to drain_deadline_s, SIGINT stops now
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def jupyter_lab_on_quickstart(work, token: str, model: str, checkpoint=None, *, base_url: str = "/",
                              host: str = "127.0.0.1", extra_cells: tuple = ()):
    """JupyterLab on a free loopback port serving a copy of the quickstart whose model is `model`
    ("tiny" or "oracle"; with "tiny", `checkpoint` replaces the shipped one), with `extra_cells` (code)
    appended; yields the URL of `base_url` on `host` (no trailing slash) and always stops the server.
    A `host` other than 127.0.0.1 must resolve to loopback in the browser (chromium_browser(host_map=...))."""
    import json
    import pathlib
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    work = pathlib.Path(work)
    nb = json.loads((root / "notebooks" / "01_quickstart.ipynb").read_text())
    src = "".join(nb["cells"][1]["source"])
    default = "model_name = None"
    assert default in src, "the quickstart's parameters cell changed: update this helper"
    nb["cells"][1]["source"] = src.replace(default, f'model_name = "{model}"')
    if checkpoint is not None:
        load = "".join(nb["cells"][2]["source"])
        assert "resolve(model_name)" in load, "the quickstart's model cell changed: update this helper"
        nb["cells"][2]["source"] = load.replace("resolve(model_name)", f"resolve({str(checkpoint)!r})")
    for src in extra_cells:
        nb["cells"].append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                            "source": src})
    (work / "01_quickstart.ipynb").write_text(json.dumps(nb))
    port = free_port()
    argv = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--expose-app-in-browser",
            "--LabApp.news_url=", "--LabServerApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            f"--ServerApp.base_url={base_url}"]
    if host != "127.0.0.1":  # reached by another name, as behind JupyterHub: Jupyter must accept that Host
        argv.append("--ServerApp.allow_remote_access=True")
    if os.geteuid() == 0:
        argv.append("--allow-root")
    envvars = {**os.environ, "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    # SIGTERM: Jupyter shuts its kernels down and exits at once; SIGINT waits for a confirmation nobody types
    # (measured: still running after 10 minutes), and the kill that follows orphans the kernels' children.
    with running(argv, port, str(work / "lab.log"), env=envvars, stop=signal.SIGTERM):
        yield f"http://{host}:{port}{base_url.rstrip('/')}"
