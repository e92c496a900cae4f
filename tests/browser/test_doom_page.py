"""`worldlab serve --model doom-engine|doom` in real headless Chromium: the real game and the learned model play
in the page, holding ArrowLeft for 1 s turns the view left and ArrowRight turns it back (judged on the page's
own frames by the same phase-correlation check as eval), and a style prompt recolours it."""

import sys

import numpy as np
import pytest

from tests.browser_support import (chromium_browser, evidence_path, free_port, have_chromium, open_playing,
                                   running, shifts_while_held, video_pixels)

pytest.importorskip("vizdoom", reason="the DOOM world needs the vizdoom wheel (a declared dependency)")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")]

from worldlab import doom  # noqa: E402
from worldlab.model.doom.checkpoint import SHIPPED  # noqa: E402

H, W = doom.FRAME_SHAPE[:2]


SHIPPED_DOOM = pytest.mark.skipif(not SHIPPED.is_file(), reason=f"no shipped DOOM checkpoint at {SHIPPED}")


@pytest.fixture(scope="module", params=["doom-engine", pytest.param("doom", marks=SHIPPED_DOOM)])
def doom_server(request, tmp_path_factory):
    port = free_port()
    root = tmp_path_factory.mktemp("serve")
    # The provenance watermark is a static pattern (docs/security.md, "Limits"): where the view faces a flat
    # wall, phase correlation between two served frames locks onto it and reads a turning view as 0 px (5 of
    # 9 samples in one CI run, 0 of 48 with it off). The turn is judged on the picture, so the mark is off.
    config = root / "serve.json"
    config.write_text('{"watermark": false}')
    argv = [sys.executable, "-m", "worldlab.cli", "serve", "--port", str(port), "--model", request.param,
            "--config", str(config)]
    log = root / "serve.log"
    with running(argv, port, str(log)):
        yield f"http://127.0.0.1:{port}", request.param


def test_holding_left_turns_the_view_left_in_the_page(doom_server, tmp_path):
    """The learned model passes by sliding its textured fog the right way (docs/model.md, "DOOM world model"):
    this checks the turn, not that the picture is still a view."""
    from playwright.sync_api import sync_playwright

    base, model = doom_server
    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = open_playing(ctx, base + "/")
        page.locator("body").click()
        page.wait_for_timeout(300)  # the explorer's momentum from the prefill settles
        left = shifts_while_held(page, "#video", "ArrowLeft", (H, W), samples=10)
        page.locator("#video").screenshot(path=str(evidence_path(tmp_path, model, "served-page-after-1s-left.png")))
        right = shifts_while_held(page, "#video", "ArrowRight", (H, W), samples=10)
        print(f"{model}: page shifts per 100 ms: left {np.round(left, 1)}, right {np.round(right, 1)}")
        # Turning left slides the picture right (positive shift): ~3 frames x 3.6 px per sample at 30 fps, 0 for
        # a sample that caught no new frame (a busy CI machine). A sample over a textureless stretch of wall can
        # misread (+2.7 and once +5.1 seen during a right turn): one such sample is allowed, a mirrored view fails.
        # With the watermark off, a quiet machine moves in every sample (8.1-14.3 px, 48 of 48).
        assert (left < -3).sum() <= 1 and (left > 1).sum() >= 5 and left.sum() > 25, left
        assert (right > 3).sum() <= 1 and (right < -1).sum() >= 5 and right.sum() < -25, right


def test_a_style_prompt_recolours_the_page(doom_server, tmp_path):
    """The real game restyles its frames; the learned model redraws its newest frame with its learned grade."""
    from playwright.sync_api import sync_playwright

    base, model = doom_server
    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = open_playing(ctx, base + "/")
        before = video_pixels(page, "#video", W, H).reshape(-1, 3).mean(0)
        page.fill("#prompt", "hell")
        page.click("text=switch prompt")
        page.wait_for_function("window.worldlab.stats().switch_ms !== null", timeout=10000)
        page.wait_for_timeout(400)
        red = video_pixels(page, "#video", W, H).reshape(-1, 3).mean(0)
        page.locator("#video").screenshot(path=str(evidence_path(tmp_path, model, "served-page-hell.png")))
        assert not (before[0] > 1.8 * before[1] and before[0] > 1.8 * before[2]), before  # it was not red before
        assert red[0] > 1.8 * red[1] and red[0] > 1.8 * red[2], red  # the hell style is red
