"""Run All on the quickstart in real JupyterLab + Chromium: the Player connects through the Jupyter server
relay while later cells still execute (a 40 s cell appended), keys move the agent, a prompt re-themes, a
toggle reaches the kernel, and it keeps playing after the run; a kernel restart is reported in the widget.
Two notebooks get two independent players. Once on a plain loopback lab, once under --ServerApp.base_url=/user/test/ reached as http://alice.test."""

import json
import pathlib
import secrets
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.browser_support import chromium_browser, have_chromium, jupyter_lab_on_quickstart
from tests.jupyter.test_lab_player import (CELL_ERROR, KERNEL_IDLE, PLAYER, STATS, TOKEN, add_and_run, frame, open_player,
                                          output_with)
from worldlab import env

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")]
ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "artifacts"
LONG_CELL = "import time\ntime.sleep(40)  # a long cell: the player must keep playing and steering\nprint('LONG CELL DONE')"
# The run is still going: the appended long cell (the last) has not printed yet. Read from the notebook
# model: JupyterLab does not render cells scrolled out of view.
LONG_DONE = """() => { const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  return JSON.stringify(cells.get(cells.length - 1).outputs.toJSON()).includes('LONG CELL DONE'); }"""
RUN_GOING = f"() => !({LONG_DONE})()"


@pytest.fixture(scope="module", params=["loopback", "hub"])
def lab(request, tmp_path_factory):
    kind = request.param
    opts = {"base_url": "/user/test/", "host": "alice.test"} if kind == "hub" else {}
    work = tmp_path_factory.mktemp(f"lab-{kind}")
    with jupyter_lab_on_quickstart(work, TOKEN, "oracle", extra_cells=(LONG_CELL,), **opts) as base:
        yield kind, base, work


def fps_over(page, seconds: float) -> float:
    f0 = page.evaluate(f"{STATS}.frames")
    page.wait_for_timeout(int(seconds * 1000))
    return (page.evaluate(f"{STATS}.frames") - f0) / seconds


def hold_right_moves_agent(page, theme: str) -> tuple:
    page.click(".worldlab-player .wl-stage")
    before = env.locate_agent(frame(page), theme)
    page.keyboard.down("ArrowRight")
    page.wait_for_timeout(600)
    page.keyboard.up("ArrowRight")
    page.wait_for_timeout(300)
    after = env.locate_agent(frame(page), theme)
    assert before and after and after[0] - before[0] >= 4, (before, after)
    return before, after


def test_run_all_plays_while_cells_execute_and_after(lab):
    from playwright.sync_api import sync_playwright

    kind, base, _work = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw, chromium_browser(pw, host_map="alice.test" if kind == "hub" else None) as ctx:
        page = ctx.new_page()
        page.goto(f"{base}/lab/tree/01_quickstart.ipynb?token={TOKEN}")
        page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90000)
        page.wait_for_function(KERNEL_IDLE, timeout=90000)
        # Not awaited: the command's promise resolves only when every cell has run.
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        page.wait_for_function(f"({CELL_ERROR})() || (document.querySelector('.worldlab-player') && {STATS}.frames > 10)",
                               timeout=90000)
        assert page.evaluate(CELL_ERROR) is None, page.evaluate(CELL_ERROR)
        # The relay answered the offer: the comm could not have (the kernel is still running cells).
        assert page.evaluate("document.querySelector('.worldlab-player').relay.ok") is True
        assert page.evaluate(RUN_GOING)

        busy_fps = fps_over(page, 5)
        assert busy_fps >= 25, f"{busy_fps:.1f} fps while a cell executes"
        hold_right_moves_agent(page, "forest")
        page.fill(".worldlab-player .wl-prompt", "a snowy day")
        page.click(".worldlab-player .wl-send")
        page.wait_for_timeout(1200)
        bg = frame(page)[1, 1].astype(float)
        assert np.abs(bg - env.background("snow")[0, 0]).max() < 40, bg
        # The oracle supports no toggle values but its own: the page greys its selects out (a toggle through
        # the relay while busy is tested on a real checkpoint in tests/widget/test_relay_endpoint.py).
        window = page.locator(".worldlab-player select[data-trait='window']")
        assert window.is_disabled() and window.locator("option").all_inner_texts() == ["short"]
        assert page.evaluate(RUN_GOING), "the long cell ended before the checks: they were not 'while busy'"
        page.locator(".worldlab-player").screenshot(path=str(ARTIFACTS / f"jupyterlab_run_all_{kind}.png"))

        page.wait_for_function(LONG_DONE, timeout=120000)
        page.wait_for_function(KERNEL_IDLE, timeout=30000)
        after_fps = fps_over(page, 4)
        assert after_fps >= 25, f"{after_fps:.1f} fps after Run All"
        add_and_run(page, "import json\nprint('STATS', json.dumps({**player.stats, 'window': player.window}, default=float))")
        st = json.loads(output_with(page, "STATS").split("STATS", 1)[1].strip().splitlines()[0])
        assert st["frontend"] == "attached" and st["mode"] == "webrtc" and st["g2g_ms"] is not None, st
        assert st["window"] == "short", st  # the quickstart's toggle(window="long") left the oracle as it is
        hold_right_moves_agent(page, "snow")

        # Bad input on the relay route, from the page itself.
        probe = page.evaluate("""async (id) => {
          const base = JSON.parse(document.getElementById('jupyter-config-data').textContent).baseUrl;
          const r1 = await fetch(`${base}worldlab/players/${id}/offer`, {method: 'POST', body: '{}'});
          const el = document.querySelector('.worldlab-player');
          const r2 = await fetch(`${base}worldlab/players/${id}`);
          return {noXsrf: r1.status, unknown: r2.status, unknownBody: await r2.json()};
        }""", secrets.token_urlsafe(16))
        assert probe["noXsrf"] == 403 and probe["unknown"] == 404, probe
        assert probe["unknownBody"]["error"]["code"] == "gone", probe

        # Kernel restart mid-stream: the widget says so and offers to reconnect.
        page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
        page.wait_for_function("document.querySelector('.worldlab-player').dataset.state === 'gone'", timeout=30000)
        msg = page.inner_text(".worldlab-player .wl-msg")
        assert "kernel restarted" in msg and page.is_visible(".worldlab-player .wl-reconnect"), msg
        page.locator(".worldlab-player").screenshot(path=str(ARTIFACTS / f"jupyterlab_kernel_restarted_{kind}.png"))


def test_relay_route_refuses_without_jupyter_auth(lab):
    _kind, base, work = lab
    if _kind == "hub":
        pytest.skip("the host alias resolves only inside the browser")
    url = f"{base}/worldlab/players/{secrets.token_urlsafe(16)}"
    with pytest.raises(urllib.error.HTTPError) as no_auth:
        urllib.request.urlopen(url, timeout=10)
    assert no_auth.value.code == 403 and json.loads(no_auth.value.read())  # JSON, not a login page

    def get(path):
        req = urllib.request.Request(f"{base}/worldlab/players/{path}", headers={"Authorization": f"token {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                return res.status, json.loads(res.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert get("x" * 10)[0] == 404  # not a player id at all: never looked up
    # A player announced by a kernel process that is gone (a restart leaves its file behind).
    runtime = pathlib.Path(work) / "runtime"
    runtime.mkdir(exist_ok=True)
    stale = secrets.token_urlsafe(16)
    (runtime / f"worldlab-player-{stale}.json").write_text(json.dumps({"port": 9, "secret": "s", "pid": 2 ** 22 + 7,
                                                                        "max_offer_bytes": 1024}))
    status, body = get(stale)
    assert status == 404 and body["error"]["code"] == "kernel_gone", body
    assert not (runtime / f"worldlab-player-{stale}.json").exists()


def test_two_notebooks_have_two_independent_players(lab):
    from playwright.sync_api import sync_playwright

    kind, base, work = lab
    if kind == "hub":
        pytest.skip("once is enough: kernels and relays do not depend on the base URL")
    cell = ("from worldlab.engine.oracle import EnvOracle\nfrom worldlab.widget import Player\n"
            "p = Player(EnvOracle(seed=3), prompt='a walk at night')\np")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": cell}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (pathlib.Path(work) / "second.ipynb").write_text(json.dumps(nb))
    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        first, second = ctx.new_page(), ctx.new_page()
        open_player(first, base)
        second.goto(f"{base}/lab/tree/second.ipynb?token={TOKEN}")
        second.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90000)
        second.wait_for_function(KERNEL_IDLE, timeout=90000)
        second.evaluate("window.jupyterapp.commands.execute('notebook:run-cell')")
        second.wait_for_function(f"document.querySelector('.worldlab-player') && {STATS}.frames > 10", timeout=90000)
        rooms = [p.evaluate(f"{PLAYER}.room") for p in (first, second)]
        ids = [p.evaluate("document.querySelector('.worldlab-player').relay.url") for p in (first, second)]
        assert rooms[0] and rooms[1] and rooms[0] != rooms[1] and ids[0] != ids[1], (rooms, ids)
        for p in (first, second):  # a background tab paints no video frames: look at each in front
            p.bring_to_front()
            assert fps_over(p, 2) >= 20
        night, forest = env.background("night")[0, 0], env.background("forest")[0, 0]
        assert np.abs(frame(second)[1, 1].astype(float) - night).max() < 40
        assert np.abs(frame(first)[1, 1].astype(float) - forest).max() < 40
