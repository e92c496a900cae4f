"""The Player inside real JupyterLab on the real DOOM game (the quickstart with model_name = "doom-engine"):
holding ArrowLeft for 1 s in the widget turns the view left and ArrowRight turns it back, judged on the
widget's own 48x64 frames by eval's phase-correlation check; a screenshot is kept."""

import numpy as np
import pytest

from tests.browser_support import (chromium_browser, evidence_path, have_chromium, jupyter_lab_on_quickstart,
                                   shifts_while_held)
from tests.jupyter.test_lab_player import PLAYER, STATS, TOKEN, open_player, output_with

pytest.importorskip("vizdoom", reason="the DOOM world needs the vizdoom wheel (a declared dependency)")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")]

from worldlab import doom  # noqa: E402

H, W = doom.FRAME_SHAPE[:2]
VIDEO = ".worldlab-player video"


@pytest.fixture(scope="module")
def doom_lab(tmp_path_factory):
    import time

    started = time.time()
    with jupyter_lab_on_quickstart(tmp_path_factory.mktemp("lab"), TOKEN, "doom-engine") as base:
        yield base
    leftover = _orphaned_games(started, grace_s=5.0)
    for proc in leftover:
        proc.kill()
    assert not leftover, "the killed kernel's game engines outlived it (worldlab.doom.reaper)"


def _orphaned_games(since: float, grace_s: float) -> list:
    """Game engines started since `since` that are not this process's: the kernel's, which is gone by now, so
    its reaper must stop them within `grace_s`."""
    import os
    import time

    import psutil

    deadline = time.monotonic() + grace_s
    while True:
        found = [p for p in psutil.process_iter(["name", "ppid", "create_time", "status"])
                 if p.info["name"] == "vizdoom" and p.info["ppid"] != os.getpid()
                 and p.info["create_time"] >= since - 1 and p.info["status"] != psutil.STATUS_ZOMBIE]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_holding_left_turns_the_game_left_in_the_widget(doom_lab, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        open_player(page, doom_lab)
        output_with(page, "'model': 'doom-engine'")  # the kernel really loaded the game
        page.wait_for_function(f"{STATS}.rtp_locked", timeout=10000)
        page.click(".worldlab-player .wl-stage")
        page.wait_for_timeout(300)
        left = shifts_while_held(page, VIDEO, "ArrowLeft", (H, W))
        page.locator(VIDEO).screenshot(path=str(evidence_path(tmp_path, "doom-engine", "widget-after-1s-left.png")))
        right = shifts_while_held(page, VIDEO, "ArrowRight", (H, W))
        print(f"widget shifts per 100 ms: left {np.round(left, 1)}, right {np.round(right, 1)}")
        # Left turns slide the picture right (+), ~3 frames x 3.6 px a sample; a sample that caught no new frame
        # reads ~0, and one over a textureless stretch of wall can misread by a few px, never by a turn's worth.
        assert (left < -3).sum() == 0 and (left > 1).sum() >= 4 and left.sum() > 20, left
        assert (right > 3).sum() == 0 and (right < -1).sum() >= 4 and right.sum() < -20, right
        assert page.evaluate(f"{PLAYER}.stats().frames") > 30
