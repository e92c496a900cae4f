"""The served page chooses its video codec per session: `?codec=h264` streams H.264 on a VP8-default
server, the codec menu starts a new session in another codec, AV1 is offered only where Chromium decodes it,
and a codec the server does not know is one line of error on the page."""

import sys
import time

import pytest

from tests.browser_support import (check_hold_right, chromium_browser, evidence_path, free_port, have_chromium,
                                   hold_key, running)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")]

INBOUND_CODEC = """async () => {  // what Chrome really decodes: the inbound video stream's codec
  const r = await window.worldlab.pc.getStats(); let mime = null, frames = 0;
  r.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") {
    frames = s.framesDecoded; mime = s.codecId && r.get(s.codecId) ? r.get(s.codecId).mimeType : null; } });
  return { mime, frames };
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    argv = [sys.executable, "-m", "worldlab.cli", "serve", "--port", str(port), "--model", "oracle", "--codec", "vp8"]
    with running(argv, port, str(log)):
        yield f"http://127.0.0.1:{port}"


def _decodes(page, mime: str) -> dict:
    """Chrome's inbound video stats once it has decoded > 30 frames of `mime` (fails after 20 s)."""
    deadline, st = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        st = page.evaluate(INBOUND_CODEC)
        if st["mime"] == mime and st["frames"] > 30:
            return st
        page.wait_for_timeout(250)
    raise AssertionError(f"Chrome did not decode {mime}: {st}")


def test_query_and_menu_choose_the_codec_per_session(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        page.goto(server + "/?codec=h264")
        page.wait_for_function("window.worldlab && window.worldlab.stats().frames > 30", timeout=20000)
        assert _decodes(page, "video/H264")["frames"] > 30
        st = page.evaluate("window.worldlab.stats()")
        assert st["codec"] == "h264" and page.eval_on_selector("#codec", "e => e.value") == "h264"
        page.wait_for_function("window.worldlab.stats().server.codec === 'h264'", timeout=5000)
        first = st["server"]["session"]

        decodable = page.evaluate("[...document.querySelectorAll('#codec option')].filter(o => o.value && "
                                  "!o.disabled).map(o => o.value)")
        assert {"vp8", "h264"} <= set(decodable)
        page.select_option("#codec", "vp8")  # a new session in VP8
        page.wait_for_function(f"window.worldlab.stats().server.session && "
                               f"window.worldlab.stats().server.session !== '{first}' && "
                               "window.worldlab.stats().codec === 'vp8'", timeout=20000)
        assert _decodes(page, "video/VP8")["frames"] > 30
        hold = hold_key(page, "#video", "#video", "window.worldlab", evidence_path(tmp_path, "codec", "vp8-hold.png"))
        assert hold["stats"][1]["new_frames"] - hold["stats"][0]["new_frames"] > 60  # still streaming, steered


def test_av1_where_chromium_decodes_it_and_the_agent_stays_crisp(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        page.goto(server + "/?codec=av1")
        if "av1" not in page.evaluate("window.worldlab && (async () => (await import('/static/player.js'))"
                                      ".receivableCodecs())()"):
            pytest.skip("this Chromium cannot decode AV1 (RTCRtpReceiver capabilities): the page falls back")
        page.wait_for_function("window.worldlab && window.worldlab.stats().frames > 30", timeout=20000)
        assert _decodes(page, "video/AV1")["frames"] > 30
        assert page.evaluate("window.worldlab.stats().codec") == "av1"
        shot = evidence_path(tmp_path, "codec", "av1-hold-right.png")
        hold = hold_key(page, "#video", "#video", "window.worldlab", shot)
        check_hold_right(hold)  # one compact agent, moved right, the stream live: AV1 pictures are whole


def test_an_unknown_codec_is_one_line_on_the_page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        page.goto(server + "/?codec=theora")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('error')", timeout=10000)
        status = page.text_content("#status")
        assert status == "error: codec must be one of vp8, h264, av1, got theora"
