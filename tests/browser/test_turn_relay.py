"""The relay path for real: a coturn TURN server on loopback, `worldlab serve` configured with it and a
relay-only policy, Chromium connects through the relay (its nominated pair is a relay candidate), the
stream plays and steers, the server's relay_pct says 100 for that room and the relay-share alert fired once."""

import json
import shutil
import sys
import urllib.request

import pytest

from tests.browser_support import chromium_browser, free_port, have_chromium, running

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium"),
              pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn's turnserver")]

NOMINATED_ROUTE = """async () => {
  const stats = await window.worldlab.pc.getStats();
  const all = [...stats.values()];
  const pair = all.find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded");
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
  return { local: local.candidateType, remote: remote.candidateType, bytes: pair.bytesReceived };
}"""


def room_relay_pct(base: str, room: str) -> float:
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("worldlab_relay_pct{") and f'room="{room}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no worldlab_relay_pct for room {room} in /metrics")


def test_page_streams_through_turn_relay(tmp_path):
    from playwright.sync_api import sync_playwright

    from worldlab.transport.turnserver import LocalTurn

    with LocalTurn() as turn:
        cfg = tmp_path / "serve.json"
        cfg.write_text(json.dumps(turn.config("relay")))
        port = free_port()
        argv = [sys.executable, "-m", "worldlab.cli", "serve", "--port", str(port), "--model", "oracle",
                "--config", str(cfg)]
        with running(argv, port, str(tmp_path / "serve.log")):
            base = f"http://127.0.0.1:{port}"
            ice = json.loads(urllib.request.urlopen(base + "/ice", timeout=5).read())
            assert ice["iceTransportPolicy"] == "relay"
            assert ice["iceServers"][0]["urls"] == [turn.url()] and ice["iceServers"][0]["username"]
            with sync_playwright() as pw, chromium_browser(pw) as ctx:
                page = ctx.new_page()
                page.goto(base + "/")
                page.wait_for_function("window.worldlab && window.worldlab.stats().frames > 30", timeout=30000)
                route = page.evaluate(NOMINATED_ROUTE)
                assert route["local"] == "relay" and route["bytes"] > 10_000  # media came in through coturn
                page.locator("body").click()
                for _ in range(4):
                    page.keyboard.down("ArrowRight")
                    page.wait_for_timeout(150)
                    page.keyboard.up("ArrowRight")
                    page.wait_for_timeout(100)
                page.wait_for_function("window.worldlab.stats().g2g_count >= 3", timeout=15000)
                st = page.evaluate("window.worldlab.stats()")
                assert 0 < st["g2g_ms"] < 1000
                page.wait_for_function("window.worldlab.stats().server.relay_pct === 100", timeout=5000)
                assert room_relay_pct(base, st["server"]["room"]) == 100.0
                metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
                assert 'worldlab_anomalies_total{kind="relay_share"} 1.0' in metrics  # 100 % > 50 %: one alert
