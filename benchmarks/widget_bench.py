"""Glass-to-glass inside the JupyterLab widget vs the served page, same model, same key pattern.

    python benchmarks/widget_bench.py --model tiny --seconds 30 --json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stream_bench import pcts, press_keys, webrtc_run  # noqa: E402
from benchmarks.browser import chromium_browser, jupyter_lab_on_quickstart  # noqa: E402

TOKEN = "worldlab-bench"
STATS = "document.querySelector('.worldlab-player').player"


def widget_run(pw, model: str, seconds: float) -> dict:
    work = pathlib.Path(tempfile.mkdtemp(prefix="worldlab-lab-"))
    with jupyter_lab_on_quickstart(work, TOKEN, model) as base, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        page.goto(f"{base}/lab/tree/01_quickstart.ipynb?token={TOKEN}")
        page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90000)
        time.sleep(3)
        page.evaluate("window.jupyterapp.shell.currentWidget.content.activeCellIndex = 0")
        for _ in range(5):
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell-and-select-next')")
            page.wait_for_timeout(150)
        page.wait_for_function(f"document.querySelector('.worldlab-player') && {STATS}.stats().rtp_locked",
                               timeout=120000)
        page.wait_for_timeout(2000)
        page.evaluate(f"{STATS}.historyLimit = 1e9; for (const k in {STATS}.samples) {STATS}.samples[k] = []")
        page.click(".worldlab-player .wl-stage")
        f0, t0 = page.evaluate(f"{STATS}.frames"), time.monotonic()
        press_keys(page, seconds)
        f1, dt = page.evaluate(f"{STATS}.frames"), time.monotonic() - t0
        samples = page.evaluate(f"{STATS}.samples")
    return {"fps_actual": (f1 - f0) / dt, "g2g_ms": pcts(samples["g2g_ms"]),
            "interval_ms_p95": pcts(samples["interval_ms"])["p95"], "rtt_ms": pcts(samples["rtt_ms"])["p50"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny", choices=["tiny", "oracle"])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        widget = widget_run(pw, args.model, args.seconds)
        page = webrtc_run(pw, args.model, args.seconds)
    out = {"model": args.model, "seconds": args.seconds, "widget": widget,
           "served_page": {"fps_actual": page["fps_actual"], "g2g_ms": page["g2g_ms"]},
           "widget_minus_page_g2g_p95_ms": widget["g2g_ms"]["p95"] - page["g2g_ms"]["p95"]}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
