"""The widget's fallback in real JupyterLab: Chromium's ICE made to fail (relay-only, no TURN server: no candidate
at all), the widget falls back by itself onto the served page's WebCodecs path over its comm (H.264 access units,
VideoDecoder, a canvas), keys steer the agent through the hub's ctl handler and glass-to-glass is measured."""

import pytest

from tests.browser_support import (check_hold_right, chromium_browser, evidence_path, have_chromium, hold_key,
                                   jupyter_lab_on_quickstart)
from tests.jupyter.test_lab_player import PLAYER, STATS, TOKEN, open_player

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")]
# The kernel's peer offers host candidates, but a relay-only page may use none of them and has no TURN server:
# ICE cannot connect, as where UDP is blocked. (The widget takes no ICE config, so the test sets the policy.)
RELAY_ONLY = """(() => { const Orig = window.RTCPeerConnection;
  window.RTCPeerConnection = function (cfg) { return new Orig({ ...(cfg || {}), iceTransportPolicy: "relay" }); };
  window.RTCPeerConnection.prototype = Orig.prototype; })();"""


def test_widget_falls_back_to_webcodecs_over_the_comm(tmp_path):
    from playwright.sync_api import sync_playwright

    with jupyter_lab_on_quickstart(tmp_path, TOKEN, "oracle") as lab, sync_playwright() as pw, \
            chromium_browser(pw) as ctx:
        ctx.add_init_script(RELAY_ONLY)
        page = ctx.new_page()
        open_player(page, lab)  # waits for painted frames: after the widget's 8 s no-frame fallback
        page.wait_for_function(f"{STATS}.transport === 'comm' && {STATS}.frames > 30", timeout=30000)
        assert page.evaluate("document.querySelector('.worldlab-player').dataset.state") == "fallback"
        hold = hold_key(page, ".worldlab-player canvas.wl-ws-frames", ".worldlab-player .wl-stage", PLAYER,
                        evidence_path(tmp_path, "oracle", "widget-webcodecs-after-3s-right.png"))
        check_hold_right(hold, "forest")
        st = page.evaluate(STATS)
        assert st["g2g_count"] >= 1 and 0 < st["g2g_ms"] < 1000 and st["decode_ms"] is not None
        # the hub drops the never-connected peer connect_timeout_s (15 s) after its answer: the view lives on
        page.wait_for_timeout(12000)
        f0 = page.evaluate(f"{STATS}.frames")
        page.wait_for_timeout(2000)
        assert page.evaluate(f"{STATS}.frames") - f0 >= 40
        assert page.evaluate("document.querySelector('.worldlab-player').dataset.state") == "fallback"
