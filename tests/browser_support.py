"""Helpers shared by the browser tests: Debian chromium through Playwright, free loopback ports, servers
that are always stopped.

Playwright cannot download its own browser here; /usr/bin/chromium is installed by `make test`.
"""

from __future__ import annotations

import os
import time

import pytest

# Chromium, its flags and launcher, free ports, server processes and the quickstart JupyterLab are defined once,
# beside the benchmarks that use them too.
from benchmarks.browser import (CHROMIUM, CHROMIUM_ARGS, chromium_browser, free_port,  # noqa: F401
                                have_chromium, jupyter_lab_on_quickstart, running, wait_for_port)


def video_pixels(page, selector: str, size: int = 64, height: int | None = None):
    """The picture in a <video> drawn at (height or size, size) with nearest-neighbour scaling, as
    (height, size, 3) uint8, read in the page: the model's frame size gives its frame back, the shown width
    gives what people see."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    url = page.evaluate("""([sel, n, h]) => {
      const v = document.querySelector(sel);
      const c = document.createElement('canvas'); c.width = n; c.height = h;
      const g = c.getContext('2d'); g.imageSmoothingEnabled = false; g.drawImage(v, 0, 0, n, h);
      return c.toDataURL('image/png');
    }""", [selector, size, height or size])  # lossless PNG: far faster to move out of the page than a list of numbers
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def open_playing(ctx, url: str, frames: int = 30):
    """A new page of the served app at `url` once its stream is locked and has shown `frames` frames."""
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_function("window.worldlab && window.worldlab.stats().rtp_locked "
                           f"&& window.worldlab.stats().frames > {frames}", timeout=30000)
    return page


def shifts_while_held(page, video: str, key: str, shape, samples: int = 9, every_ms: int = 100):
    """Hold `key` and read the `video`'s picture at the model's frame `shape` (H, W) every `every_ms`; ->
    (samples - 1,) horizontal shifts between consecutive readings (worldlab.fidelity: + = content moved right,
    what a DOOM left turn does)."""
    import numpy as np

    from worldlab import fidelity

    page.keyboard.down(key)
    frames = []
    for _ in range(samples):
        page.wait_for_timeout(every_ms)
        frames.append(video_pixels(page, video, shape[1], shape[0]))
    page.keyboard.up(key)
    return np.array([fidelity.horizontal_shift(a, b) for a, b in zip(frames, frames[1:])])


# The models the key-hold tests run on: the environment itself (proves the check), the micro checkpoint this
# session trains (the real model path; barely trained, so only what any real model must do is asserted) and
# the shipped tiny checkpoint (strict; select it with -m shipped_tiny or -k tiny).
HOLD_MODELS = ["oracle", "micro", pytest.param("shipped-tiny", marks=pytest.mark.shipped_tiny)]


def evidence_path(tmp_path, subdir: str, name: str):
    """Where a test keeps a picture for people: $WORLDLAB_EVIDENCE_DIR/subdir/name if set, else tmp_path."""
    import pathlib

    root = os.environ.get("WORLDLAB_EVIDENCE_DIR")
    path = pathlib.Path(root) / subdir / name if root else pathlib.Path(tmp_path) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def hold_key(page, video: str, focus: str, player: str, shot, key: str = "ArrowRight", seconds: float = 3.0):
    """Focus the player (click `focus`), hold `key` for `seconds`, release it, screenshot the `video` element
    to `shot`. Returns the picture before and after at the size it is shown (video_pixels), the
    frame -> screen scale (shown width / 64) and the page's stats (`player` is the JS Player) around it."""
    from worldlab import env

    shown = round(page.evaluate("(sel) => document.querySelector(sel).getBoundingClientRect().width", video))
    page.click(focus)
    before = video_pixels(page, video, shown)
    st0, t0 = page.evaluate(f"{player}.stats()"), time.monotonic()
    page.keyboard.down(key)
    page.wait_for_timeout(seconds * 1000)
    page.keyboard.up(key)
    st1, t1 = page.evaluate(f"{player}.stats()"), time.monotonic()
    after = video_pixels(page, video, shown)
    page.locator(video).screenshot(path=str(shot))
    return {"before": before, "after": after, "scale": shown / env.SIZE, "seconds": t1 - t0, "stats": (st0, st1)}


def agent_pixels(picture, theme: str, scale: float):
    """(count, centroid (x, y) in 64x64 frame coordinates or None) of the pixels near the theme's agent
    colour in a picture shown at `scale` screen pixels per frame pixel (env.locate_agent's tolerance)."""
    import numpy as np

    from worldlab import env

    color = np.array(next(t.agent for t in env.THEME_LIST if t.name == theme), dtype=np.int32)
    ys, xs = np.nonzero(np.abs(picture.astype(np.int32) - color).sum(-1) <= 60)
    if not len(xs):
        return 0, None
    return len(xs), ((xs.mean() + 0.5) / scale - 0.5, (ys.mean() + 0.5) / scale - 0.5)


def check_hold_right(hold: dict, theme: str = "forest", strict: bool = True) -> None:
    """What holding ArrowRight must show. Any model: the stream stayed live (>= 20 new frames/s, the key
    was acked and shown), the picture is not blank and not frozen (objects move on their own). strict (the
    environment, or a model that claims fidelity): the agent is one compact 6x6 block before and after, and
    it moved >= 20 px right."""
    import numpy as np

    from worldlab import env

    (st0, st1), before, after = hold["stats"], hold["before"], hold["after"]
    want = env.AGENT ** 2 * hold["scale"] ** 2
    (n0, c0), (n1, c1) = (agent_pixels(p, theme, hold["scale"]) for p in (before, after))
    fps = (st1["new_frames"] - st0["new_frames"]) / hold["seconds"]
    at = lambda c: "nowhere" if c is None else f"({c[0]:.1f}, {c[1]:.1f})"  # noqa: E731
    print(f"hold: {fps:.1f} new frames/s; agent {n0} px at {at(c0)} -> {n1} px at {at(c1)} (6x6: {want:.0f} px)")
    assert fps >= 20, f"{fps:.1f} new frames/s while the key was held"
    assert st1["g2g_count"] > st0["g2g_count"], "the key press was never acked and shown"
    assert after.reshape(-1, 3).std(0).max() > 4, "blank picture (one flat colour)"
    changed = (np.abs(after.astype(int) - before.astype(int)).sum(-1) > 60).sum() / hold["scale"] ** 2
    assert changed >= 4, f"frozen picture: {changed:.1f} frame pixels changed while the key was held"
    if not strict:
        return
    # The count allows +-30 %: VP8 (4:2:0 chroma, DCT quantization at the rung's bitrate) can blur the block's
    # edges, so a ring of edge pixels about one encoded pixel wide may fall either side of the colour tolerance.
    for name, n in (("before", n0), ("after", n1)):
        assert 0.7 * want <= n <= 1.3 * want, f"agent {name}: {n} px near its colour, a 6x6 block is {want:.0f}"
    assert c1[0] - c0[0] >= 20, f"agent centroid x {c0[0]:.1f} -> {c1[0]:.1f} (frame px) after holding the key"
