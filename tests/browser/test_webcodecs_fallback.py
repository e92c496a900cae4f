"""The WebCodecs fallback in Chromium: ICE made to fail for real (relay-only, its one TURN server unreachable, as
where UDP is blocked), the page opens the WebSocket by itself, decodes H.264 with VideoDecoder onto a canvas in
the video's place, steers the agent and measures glass-to-glass; ?transport=ws goes there directly."""

import json
import socket
import sys
import urllib.request

import pytest

from tests.browser_support import (check_hold_right, chromium_browser, evidence_path, free_port, have_chromium,
                                   hold_key, running)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")]
CANVAS = "#video-ws"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def relay_only_server(tmp_path_factory):
    """`worldlab serve` telling its pages to use a TURN relay only, one that nothing answers: ICE cannot connect."""
    work = tmp_path_factory.mktemp("ws-fallback")
    cfg = work / "serve.json"
    nowhere = {"urls": f"turn:127.0.0.1:{free_udp_port()}?transport=udp", "username": "u", "credential": "c"}
    cfg.write_text(json.dumps({"ice_transport_policy": "relay", "ice_servers": [nowhere]}))
    port = free_port()
    argv = [sys.executable, "-m", "worldlab.cli", "serve", "--port", str(port), "--model", "oracle",
            "--config", str(cfg)]
    with running(argv, port, str(work / "serve.log")):
        yield f"http://127.0.0.1:{port}"


def test_page_falls_back_to_webcodecs_when_ice_fails(relay_only_server, tmp_path):
    from playwright.sync_api import sync_playwright

    base = relay_only_server
    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        page.goto(base + "/")
        page.wait_for_function("window.worldlab && window.worldlab.pc", timeout=20000)
        assert page.evaluate("window.worldlab.stats().transport") == "webrtc"  # it tries WebRTC first
        page.wait_for_function("window.worldlab.stats().transport === 'ws' && window.worldlab.stats().frames > 30",
                               timeout=30000)
        assert page.evaluate("window.worldlab.fellBack")
        assert page.is_hidden("#video") and page.is_visible(CANVAS)
        st = page.evaluate("window.worldlab.stats()")
        assert st["width"] == st["height"] >= 128 and st["state"] == "live"  # a rung of the ladder (auto may step)
        print("ws fallback stats:", {k: st[k] for k in ("width", "fps_actual", "decode_ms", "first_frame_ms")},
              "rung", st["server"].get("rung"))
        shot = evidence_path(tmp_path, "oracle", "ws-after-3s-right.png")
        hold = hold_key(page, CANVAS, "body", "window.worldlab", shot)
        check_hold_right(hold)  # decoded, painted, and the agent moved right as the key was held
        page.wait_for_function("window.worldlab.stats().g2g_count >= 1 && window.worldlab.stats().server.room",
                               timeout=10000)
        st = page.evaluate("window.worldlab.stats()")
        assert 0 < st["g2g_ms"] < 1000 and st["rtt_ms"] is not None and st["decode_ms"] is not None
        health = json.loads(urllib.request.urlopen(base + "/healthz").read())
        assert health["rooms"] == 1  # the socket's room; the failed WebRTC attempt's room was replaced or dropped


def test_transport_ws_query_goes_straight_to_the_socket(relay_only_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        page.goto(relay_only_server + "/?transport=ws")
        page.wait_for_function("window.worldlab && window.worldlab.stats().frames > 10", timeout=20000)
        st = page.evaluate("window.worldlab.stats()")
        assert st["transport"] == "ws" and page.evaluate("window.worldlab.pc") is None
        page.evaluate("window.worldlab.close()")
        page.goto(relay_only_server + "/?transport=ws&room=bad%20room")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('error')", timeout=10000)
        assert "bad_room" in page.text_content("#status")  # the server's reason reaches the page
