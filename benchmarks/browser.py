"""Debian Chromium through Playwright, for the benchmarks and (via tests/browser_support) the browser tests:
one definition of the binary and its flags. Playwright cannot download its own browser here; `make test`
installs /usr/bin/chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

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
