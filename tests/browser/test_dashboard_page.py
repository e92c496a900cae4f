"""`worldlab dashboard` in real headless Chromium beside a player page steering a room of `worldlab serve`:
the dashboard page shows the room live (status line, five plots drawn) and counts the player page's reports."""

import sys

import pytest

from tests.browser_support import chromium_browser, evidence_path, free_port, have_chromium, running

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")]


def test_dashboard_page_watches_a_live_room(tmp_path):
    from playwright.sync_api import sync_playwright

    port, dash_port = free_port(), free_port()
    serve = [sys.executable, "-m", "worldlab.cli", "serve", "--model", "oracle", "--port", str(port)]
    dash = [sys.executable, "-m", "worldlab.cli", "dashboard", "--server", f"http://127.0.0.1:{port}",
            "--port", str(dash_port), "--period", "0.5"]
    with running(serve, port, str(tmp_path / "serve.log")), \
            running(dash, dash_port, str(tmp_path / "dashboard.log")), \
            sync_playwright() as pw, chromium_browser(pw) as ctx:
        player = ctx.new_page()
        player.goto(f"http://127.0.0.1:{port}/")
        player.wait_for_function("window.worldlab && window.worldlab.stats().frames > 30", timeout=20000)
        player.locator("body").click()
        player.keyboard.down("ArrowRight")
        player.wait_for_timeout(1500)
        player.keyboard.up("ArrowRight")

        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{dash_port}/")
        # Panel renders into shadow roots: Playwright's text locators pierce them, document.body.innerText does not.
        page.locator("text=/1 live rooms/").wait_for(timeout=30000)
        page.locator("text=/of reporting rooms meet it/").wait_for(timeout=15000)  # the player page reported g2g
        page.wait_for_timeout(4000)  # a few scrapes: the lines grow
        page.screenshot(path=str(evidence_path(tmp_path, "dashboard", "dashboard-live-room.png")), full_page=True)
        status = page.locator("text=/scraped every/").inner_text()
        assert "DRAINING" not in status and "cannot reach" not in status
        assert page.locator("canvas").count() >= 5  # the five plots were drawn
