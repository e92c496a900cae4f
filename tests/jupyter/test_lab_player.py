"""The Player inside real JupyterLab in real Chromium: the quickstart's widget streams at >= 25 fps, keys
move the agent, a prompt re-themes the world, the overlay shows numbers, the kernel's player.stats agrees
with the page, a screenshot is kept, and re-running the cell leaves no orphan session behind; holding
ArrowRight for 3 s moves the agent as one compact block (oracle, micro checkpoint, shipped tiny)."""

import json
import pathlib
import time

import numpy as np
import pytest

from tests.browser_support import (HOLD_MODELS, check_hold_right, chromium_browser, evidence_path, have_chromium,
                                   hold_key, jupyter_lab_on_quickstart, video_pixels)
from worldlab import env

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")]
ROOT = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
TOKEN = "worldlab-test"

PLAYER = "document.querySelector('.worldlab-player').player"
STATS = f"{PLAYER}.stats()"
KERNEL_IDLE = """() => { const w = window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k && k.status === 'idle'; }"""
CELL_ERROR = """() => { const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  for (let i = 0; i < cells.length; i++) for (const o of (cells.get(i).outputs || {toJSON: () => []}).toJSON())
    if (o.output_type === 'error') return `cell ${i}: ${o.ename}: ${o.evalue}`;
  return null; }"""


def frame(page):
    return video_pixels(page, ".worldlab-player video")


def run_cells(page, n, start=None):
    if start is not None:  # clicking inside a widget moves the active cell: select explicitly
        page.evaluate(f"window.jupyterapp.shell.currentWidget.content.activeCellIndex = {start}")
    for _ in range(n):
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell-and-select-next')")
        page.wait_for_timeout(150)


def add_and_run(page, source):
    page.evaluate("""(src) => { const nb = window.jupyterapp.shell.currentWidget.content;
      nb.model.sharedModel.insertCell(nb.model.cells.length, {cell_type: 'code', source: src});
      nb.activeCellIndex = nb.model.cells.length - 1;
      return window.jupyterapp.commands.execute('notebook:run-cell'); }""", source)


def open_player(page, lab):
    """Open the quickstart, run its first five cells (title, parameters, load the model, keys help, the
    Player) and wait until the widget streams."""
    page.goto(f"{lab}/lab/tree/01_quickstart.ipynb?token={TOKEN}")
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90000)
    page.wait_for_function(KERNEL_IDLE, timeout=90000)
    run_cells(page, 5, start=0)
    page.wait_for_function(f"({CELL_ERROR})() || (document.querySelector('.worldlab-player') && {STATS}.frames > 10)",
                           timeout=90000)
    error = page.evaluate(CELL_ERROR)
    assert error is None, error  # e.g. a checkpoint that does not load: say so now, not after a timeout
    page.wait_for_function(KERNEL_IDLE, timeout=30000)


def output_with(page, marker, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for text in page.locator(".jp-OutputArea-output").all_inner_texts():
            if marker in text:
                return text
        page.wait_for_timeout(250)
    raise AssertionError(f"no output containing {marker!r}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    # The widget is model-agnostic; the environment oracle makes "the agent moved" and "the theme changed"
    # exact checks of the widget rather than of the model's fidelity (which `worldlab eval` measures).
    with jupyter_lab_on_quickstart(tmp_path_factory.mktemp("lab"), TOKEN, "oracle") as base:
        yield base


@pytest.fixture(scope="module", params=HOLD_MODELS)
def any_lab(request, tmp_path_factory):
    if request.param == "oracle":
        yield request.getfixturevalue("lab"), "oracle"
        return
    ckpt = request.getfixturevalue("micro_ckpt")[0] if request.param == "micro" else None
    with jupyter_lab_on_quickstart(tmp_path_factory.mktemp("lab"), TOKEN, "tiny", checkpoint=ckpt) as base:
        yield base, request.param


def test_player_widget_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        open_player(page, lab)

        f0 = page.evaluate(f"{STATS}.frames")
        page.wait_for_timeout(10_000)
        fps = (page.evaluate(f"{STATS}.frames") - f0) / 10.0
        assert fps >= 25, f"widget video at {fps:.1f} fps"

        page.click(".worldlab-player .wl-stage")
        before = env.locate_agent(frame(page), "forest")
        page.keyboard.down("ArrowRight")
        page.wait_for_timeout(600)
        page.keyboard.up("ArrowRight")
        page.wait_for_timeout(300)
        after = env.locate_agent(frame(page), "forest")
        assert before and after and after[0] - before[0] >= 4, (before, after)

        for key in ["ArrowDown", "ArrowLeft", "ArrowUp", "ArrowRight"] * 2:
            page.keyboard.down(key)
            page.wait_for_timeout(200)
            page.keyboard.up(key)
            page.wait_for_timeout(150)
        page.fill(".worldlab-player .wl-prompt", "a snowy day")
        page.click(".worldlab-player .wl-send")
        page.wait_for_timeout(1200)
        bg = frame(page)[1, 1].astype(float)
        assert np.abs(bg - env.background("snow")[0, 0]).max() < 40, bg

        overlay = page.locator(".worldlab-player .wl-overlay")
        assert float(overlay.get_attribute("data-fps")) > 0 and overlay.get_attribute("data-g2g") != "–"
        page_stats = page.evaluate(STATS)
        page.locator(".worldlab-player").screenshot(path=str(ARTIFACTS / "jupyterlab_player.png"))

        run_cells(page, 2, start=5)  # markdown, then record() + print(player.stats)
        kernel = json.loads(output_with(page, '"capture_ms"').strip().splitlines()[0])
        assert kernel["frontend"] == "attached" and kernel["mode"] == "webrtc"
        assert kernel["room"] == page_stats["server"]["room"] and kernel["fps_target"] == 30
        assert abs(kernel["fps_actual"] - page_stats["fps_actual"]) < 5
        assert kernel["g2g_ms"] is not None and page_stats["g2g_ms"] is not None
        (ARTIFACTS / "widget_stats.json").write_text(json.dumps({"page": page_stats, "kernel": kernel}, default=str))

        # Re-running the Player cell replaces the view: the old session must close, not linger.
        page.evaluate("""() => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = 4;
          return window.jupyterapp.commands.execute('notebook:run-cell'); }""")
        page.wait_for_timeout(1000)
        add_and_run(page, "import threading, time\ntime.sleep(8)\nfrom worldlab.widget.player import _live\n"
                          "names = [t.name for t in threading.enumerate()]\n"
                          "print('CHECK', len([p for p in _live if p.status == 'live']), "
                          "names.count('worldlab-model'), sum(len(p.hub.pcs) for p in _live if p.status == 'live'))")
        check = output_with(page, "CHECK").split()
        assert check[1:4] == ["1", "1", "1"], check  # one live player, one model worker, one peer


def test_holding_right_moves_one_compact_agent_in_the_widget(any_lab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, model = any_lab
    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        open_player(page, base)
        # the model cell's describe() names what the kernel really loaded
        output_with(page, {"oracle": "'model': 'oracle'", "micro": "'preset': 'micro'"}.get(model, "'preset': 'tiny'"))
        page.wait_for_function(f"{STATS}.rtp_locked", timeout=10000)
        hold = hold_key(page, ".worldlab-player video", ".worldlab-player .wl-stage", PLAYER,
                        evidence_path(tmp_path, model, "widget-after-3s-right.png"))
    check_hold_right(hold, "forest", strict=model != "micro")


def test_dashboard_inside_jupyterlab_follows_a_served_room(lab, tmp_path):
    """The operators' dashboard (worldlab.server.dashboard) as a notebook output: it shows a room of a running
    `worldlab serve` and keeps polling from the kernel while the kernel is idle (Panel's periodic callback)."""
    import sys

    from playwright.sync_api import sync_playwright

    from tests.browser_support import free_port, running

    port = free_port()
    serve = [sys.executable, "-m", "worldlab.cli", "serve", "--model", "oracle", "--port", str(port)]
    with running(serve, port, str(tmp_path / "serve.log")), sync_playwright() as pw, chromium_browser(pw) as ctx:
        player = ctx.new_page()  # a player in the served page makes the room the dashboard shows
        player.goto(f"http://127.0.0.1:{port}/")
        player.wait_for_function("window.worldlab && window.worldlab.stats().frames > 30", timeout=30000)
        page = ctx.new_page()
        page.goto(f"{lab}/lab/tree/01_quickstart.ipynb?token={TOKEN}")
        page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90000)
        page.wait_for_function(KERNEL_IDLE, timeout=90000)
        add_and_run(page, "import panel as pn\npn.extension(inline=True)  # bokeh/panel JS from the kernel, not a CDN")
        page.wait_for_function(KERNEL_IDLE, timeout=60000)
        add_and_run(page, "from worldlab.server.dashboard import Dashboard\n"
                          f"dash = Dashboard('http://127.0.0.1:{port}', period_s=0.5)\ndash.panel()")
        page.locator(".jp-OutputArea-output >> text=/1 live rooms/").wait_for(timeout=60000)
        page.wait_for_function(KERNEL_IDLE, timeout=30000)
        page.wait_for_timeout(4000)  # the kernel is idle: only the periodic callback scrapes now
        error = page.evaluate(CELL_ERROR)
        assert error is None, error
        assert page.locator(".jp-OutputArea-output canvas").count() >= 5  # the five plots were drawn
        page.locator(".jp-OutputArea-output >> text=/live rooms/").last.screenshot(
            path=str(evidence_path(tmp_path, "dashboard", "dashboard-in-jupyterlab-status.png")))
        add_and_run(page, "print('POLLS', dash.polls, len(dash.buffer.data))")
        polls, rows = (int(v) for v in output_with(page, "POLLS").split()[1:3])
        assert polls >= 6 and rows >= 5, (polls, rows)  # ~2 scrapes a second while idle, a row per scrape
