"""A session over an impaired network: 2 % loss, 40 ms delay, 10 ms jitter each way, then a 3 s outage.
Reports fps per phase, glass-to-glass (key -> first displayed frame at or after the frame that applied it),
and whether the stream comes back after the outage on the same connection, without a new offer (oracle).

This kernel has no sch_netem (tc netem on a veth pair is impossible here), so benchmarks/impairment.py
applies the conditions inside aioice's UDP sockets (every datagram in and out: RTP, RTCP, DTLS, SCTP, STUN):
  --client page    the served page in Debian Chromium (Playwright), as people use it; the server runs in this
                   process and its sockets are impaired. The page measures itself (player.js stats()); the
                   outage must pass without a page reload or a new offer (counted server-side).
  --client python  worldlab.transport.client.PeerClient against a `worldlab serve` subprocess; the client's
                   sockets are impaired.

    python benchmarks/impair_bench.py --client page --seconds 20 --json --screenshot artifacts/after.png
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import pathlib
import secrets
import sys
import tempfile
import threading
import time

import aiohttp

from worldlab.engine.metrics import percentiles
from worldlab.transport.client import PeerClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` runs too
from benchmarks.impairment import Impairment  # noqa: E402
from benchmarks.serving import serving  # noqa: E402


class Meter:
    """Maps decoded frames to server frame ids (RTP timestamp = random origin + the server's pts, found by
    voting as player.js does) and times key -> first decoded frame at or after the acked frame."""

    def __init__(self, client: PeerClient):
        self.client, self.arrivals, self.g2g = client, [], []
        self.pending: dict[int, float] = {}
        self.origin = None

    def on_frame(self, frame) -> None:
        self.arrivals.append((time.monotonic(), frame.pts))

    def _lock_origin(self, pts_to_id: dict) -> None:
        """Vote over the recent arrivals: exactly one origin matches many of them."""
        votes = collections.Counter((rtp - p) % 2**32 for _t, rtp in self.arrivals[-30:] for p in pts_to_id)
        best = votes.most_common(2)
        if best and best[0][1] >= 8 and (len(best) == 1 or best[1][1] * 2 < best[0][1]):
            self.origin = best[0][0]

    def resolve(self) -> None:
        frames = [m for m in self.client.msgs if m["type"] == "frame"][-300:]
        pts_to_id = {m["pts"]: m["frame_id"] for m in frames}
        acks = {m["seq"]: m["frame_id"] for m in self.client.msgs if m["type"] == "ack"}
        if self.origin is None:
            self._lock_origin(pts_to_id)
        if self.origin is None:
            return
        shown = [(t, pts_to_id.get((rtp - self.origin) % 2**32)) for t, rtp in self.arrivals[-300:]]
        for seq, t0 in list(self.pending.items()):
            if seq in acks:
                hit = next((t for t, fid in shown if fid is not None and fid >= acks[seq] and t >= t0), None)
                if hit is not None:
                    self.g2g.append((hit - t0) * 1000)
                    del self.pending[seq]


async def run(seconds: float, outage_s: float, port: int, loss: float, delay_ms: float, jitter_ms: float) -> dict:
    imp = Impairment(loss=loss, delay_ms=delay_ms, jitter_ms=jitter_ms)
    with imp.installed():
        url = f"http://127.0.0.1:{port}/offer"
        async with aiohttp.ClientSession() as http:
            client = PeerClient(keep_frames=False)
            meter = Meter(client)

            async def pull(track):  # count and time every decoded frame
                while True:
                    try:
                        f = await track.recv()
                    except Exception:
                        return
                    client.n_frames += 1
                    meter.on_frame(f)

            client._pull = pull
            await client.connect_http(http, url)
            await client.wait_for(lambda: client.n_frames >= 30, timeout=30)
            phases = {}

            async def phase(name: str, dur: float, keys: bool = True):
                n0, t0, drop0, sent0 = client.n_frames, time.monotonic(), imp.dropped, imp.sent
                held = ["left", "right", "up", "down"]
                while time.monotonic() - t0 < dur:
                    if keys:
                        seq = client.send(type="action", keys=[held[int(time.monotonic() * 2) % 4]], t=0)
                        meter.pending[seq] = time.monotonic()
                    await asyncio.sleep(0.25)
                    meter.resolve()
                dt = time.monotonic() - t0
                phases[name] = {"fps": round((client.n_frames - n0) / dt, 2), "seconds": round(dt, 1),
                                "datagram_loss_pct": round(100 * (imp.dropped - drop0) / max(1, imp.sent - sent0), 2)}

            await phase("impaired", seconds)
            g2g = sorted(meter.g2g)
            imp.outage(outage_s)
            await phase("outage", outage_s, keys=False)
            t_back, n_back = time.monotonic(), client.n_frames
            await client.wait_for(lambda: client.n_frames >= n_back + 10, timeout=30)
            recovered_s = time.monotonic() - t_back
            await phase("after_outage", min(10.0, seconds))
            await client.close()
    return {"impairment": {"loss_pct": 100 * loss, "delay_ms": delay_ms, "jitter_ms": jitter_ms, "each_way": True,
                           "outage_s": outage_s},
            "phases": phases, "g2g_ms": percentiles(g2g, (50, 95)),
            "recovered_after_outage_s": round(recovered_s, 2), "same_peer_connection": True}


def measure(seconds: float = 20.0, outage_s: float = 3.0, loss: float = 0.02, delay_ms: float = 40.0,
            jitter_ms: float = 10.0) -> dict:
    """The Python client against a `worldlab serve` subprocess (the client's sockets are impaired)."""
    with tempfile.TemporaryDirectory() as work, serving(work) as (base, _proc):
        out = asyncio.run(run(seconds, outage_s, int(base.rsplit(":", 1)[1]), loss, delay_ms, jitter_ms))
    return {"client": "python", **out}


# -- the served page in Chromium ---------------------------------------------------------------------------
class InProcessServer:
    """The app `worldlab serve --model oracle` runs, on 127.0.0.1 (a free port) in this process, on its own
    thread and event loop: an Impairment installed around it wraps the server's aioice sockets, so every
    datagram to and from the page is impaired. Counts POST /offer responses (a reconnecting page makes one)."""

    def __init__(self, config=None):
        self.config, self.offers = config, 0

    def __enter__(self) -> InProcessServer:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="worldlab-serve", daemon=True)
        self.thread.start()
        try:
            self.base = self.call(self._start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    async def _start(self) -> str:
        from aiohttp import web

        from worldlab.engine.oracle import EnvOracle
        from worldlab.server import build_app
        from worldlab.server.app import HUB

        self.app = build_app(EnvOracle(), host="127.0.0.1", config=self.config)
        self.hub = self.app[HUB]

        async def count_offers(request, response):
            if request.path == "/offer":
                self.offers += 1

        self.app.on_response_prepare.append(count_offers)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def call(self, fn, timeout: float = 60.0):
        """fn() on the server's loop (a coroutine is awaited there); its result."""
        async def run_there():
            out = fn() if callable(fn) else fn
            return await out if asyncio.iscoroutine(out) else out
        return asyncio.run_coroutine_threadsafe(run_there(), self.loop).result(timeout)

    def session(self, room: str) -> dict:
        """A served room as the server sees it: its peer connections (by identity), the agent's x in the
        oracle's world, the page's last `report` (Room.page_report), how many of its `ctl` messages were
        over the rate limits (a burst of queued ones after an outage would be); and how many rooms there are."""
        def get():
            one = self.hub.rooms.get(room)
            return {"rooms": len(self.hub.rooms), "room": one and one.id, "pcs": one and sorted(map(id, one.pcs)),
                    "agent_x": one and int(one.session.state.world.agent[0]),
                    "report": one and one.page_report(), "rate_drops": one and one.rate_drops}
        return self.call(get)

    def _stop_loop(self) -> None:
        async def cancel_the_rest():  # tasks aiortc leaves behind (MediaRelay readers): end them, not destroy
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            if rest:
                await asyncio.wait(rest, timeout=5)

        try:
            self.call(cancel_the_rest(), timeout=10)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)
        self.loop.close()

    def __exit__(self, *exc) -> None:
        try:
            self.call(self.runner.cleanup(), timeout=30)  # on_shutdown: the hub closes its rooms, the scheduler stops
        finally:
            self._stop_loop()


# Injected once the page plays: a reload would lose it (`mark`). Times every newly decoded frame the page
# presents (requestVideoFrameCallback, a new RTP timestamp) and the page's connection state changes.
RECORDER_JS = """(mark) => {
  const p = window.worldlab, v = p.video;
  p.historyLimit = 1e6;  // keep every g2g sample of the run, not the last 600
  const rec = window.__impaired = {mark, pc: p.pc, frames: [], states: [], outageEnd: null};
  let last = null;
  const onFrame = (now, md) => {
    if (md.rtpTimestamp !== last) { last = md.rtpTimestamp; rec.frames.push(md.expectedDisplayTime || now); }
    v.requestVideoFrameCallback(onFrame);
  };
  v.requestVideoFrameCallback(onFrame);
  const note = () => rec.states.push({t: performance.now(), pc: rec.pc.connectionState,
                                      ice: rec.pc.iceConnectionState, page: p.state});
  rec.pc.addEventListener("connectionstatechange", note);
  rec.pc.addEventListener("iceconnectionstatechange", note);
}"""
SNAPSHOT_JS = """() => { const p = window.worldlab, s = p.stats();
  return {now: performance.now(), frames: s.frames, new_frames: s.new_frames, fps_actual: s.fps_actual,
          g2g_n: p.samples.g2g_ms.length, dropped: s.dropped_frames, state: p.state, rung: s.server.rung,
          server_fps: s.server.fps_actual}; }"""
STEER_KEYS, HOLD_MS, GAP_MS = ("ArrowRight", "ArrowLeft"), 300, 100  # the agent sways +-18 px about its place


class PageRun:
    """One page session in Chromium against an InProcessServer under an Impairment: phases of steering
    (or not), each measured by the page itself (player.js stats(): presented frames, new frame ids, fps_actual,
    glass-to-glass samples)."""

    def __init__(self, page, srv: InProcessServer, imp: Impairment):
        self.page, self.srv, self.imp = page, srv, imp
        self.phases, self.g2g = {}, {}
        self.key_i = 0

    def snap(self) -> dict:
        return self.page.evaluate(SNAPSHOT_JS)

    def tap(self) -> None:
        """Hold the next steering key HOLD_MS, release it, wait GAP_MS: two actions, two g2g samples."""
        key = STEER_KEYS[self.key_i % len(STEER_KEYS)]
        self.key_i += 1
        self.page.keyboard.down(key)
        self.page.wait_for_timeout(HOLD_MS)
        self.page.keyboard.up(key)
        self.page.wait_for_timeout(GAP_MS)

    def phase(self, name: str, seconds: float, keys: bool = True) -> dict:
        s0, (sent0, drop0), t_end = self.snap(), self.imp.counts(), time.monotonic() + seconds
        fps_samples = []
        while time.monotonic() < t_end:
            if keys:
                self.tap()
            else:
                self.page.wait_for_timeout(min(250, max(1, 1000 * (t_end - time.monotonic()))))
            fps_samples.append(self.snap()["fps_actual"])
        s1, (sent1, drop1) = self.snap(), self.imp.counts()
        dt = (s1["now"] - s0["now"]) / 1000
        self.g2g[name] = self.page.evaluate("([a, b]) => window.worldlab.samples.g2g_ms.slice(a, b)",
                                            [s0["g2g_n"], s1["g2g_n"]])
        self.phases[name] = {
            "seconds": round(dt, 1),
            "fps": round((s1["frames"] - s0["frames"]) / dt, 2),  # presented frames/s (what fps_actual counts)
            "new_fps": round((s1["new_frames"] - s0["new_frames"]) / dt, 2),  # distinct server frames/s
            "fps_actual_p50": percentiles(fps_samples, (50,))["p50"],  # the page's own 2 s window, sampled
            "dropped_frames": (s1["dropped"] or 0) - (s0["dropped"] or 0),
            "datagram_loss_pct": round(100 * (drop1 - drop0) / max(1, sent1 - sent0), 2),
            "g2g_ms": percentiles(self.g2g[name], (50, 95)), "rung": s1["rung"],
            "server_fps": s1["server_fps"]}  # frames the server sent per second (its last stats message)
        return self.phases[name]

    def outage(self, seconds: float) -> float:
        """Drop everything both ways for `seconds` (no keys meanwhile); then wait for the page's first newly
        decoded frame. Returns outage end -> that frame's display, in seconds (the page's clock). Keys pressed
        before it are all shown first, so every g2g sample after it is of a key pressed after it."""
        self.page.wait_for_function("window.worldlab.pending.size === 0", timeout=10000)
        end = self.imp.outage(seconds)
        self.page.evaluate("(ms) => { window.__impaired.outageEnd = performance.now() + ms; }",
                           1000 * (end - time.monotonic()))
        self.phase("outage", max(0.0, end - time.monotonic() - 0.1), keys=False)  # inside it, not past its end
        self.page.wait_for_function("() => { const r = window.__impaired;"
                                    " return r.frames.length && r.frames[r.frames.length - 1] > r.outageEnd; }",
                                    timeout=30000)
        return self.page.evaluate("() => { const r = window.__impaired;"
                                  " return (r.frames.find((t) => t > r.outageEnd) - r.outageEnd) / 1000; }")

    def steer_check(self, hold_ms: int = 600) -> dict:
        """Hold one key toward the middle: the served agent must move that way, and the page must have its
        key acked and shown (a new g2g sample)."""
        room = self.page.evaluate("window.worldlab.room")  # the page's room now (a new one after a new offer)
        x0, n0 = self.srv.session(room)["agent_x"], self.snap()["g2g_n"]
        key, sign = ("ArrowLeft", -1) if x0 > 29 else ("ArrowRight", 1)
        self.page.keyboard.down(key)
        self.page.wait_for_timeout(hold_ms)
        self.page.keyboard.up(key)
        self.page.wait_for_timeout(500)
        x1, n1 = self.srv.session(room)["agent_x"], self.snap()["g2g_n"]
        return {"key": key, "agent_x": [x0, x1], "moved_px": sign * (x1 - x0), "acked_and_shown": n1 - n0}


def run_page(seconds: float, outage_s: float, loss: float, delay_ms: float, jitter_ms: float, *,
             warmup_s: float = 3.0, after_s: float | None = None, screenshot: str | None = None,
             on_page=None, config=None) -> dict:
    """The served page in Debian Chromium; the in-process server's sockets impaired. on_page(page, run): a
    hook called after the steering check, before the browser closes (tests look at the picture there).
    config: the server's SessionConfig (None: the defaults `worldlab serve` uses)."""
    from playwright.sync_api import sync_playwright

    from benchmarks.browser import chromium_browser, have_chromium

    if not have_chromium():
        raise RuntimeError("the page mode needs /usr/bin/chromium (make browser-deps)")
    imp = Impairment(loss=loss, delay_ms=delay_ms, jitter_ms=jitter_ms)
    mark = secrets.token_hex(8)
    with imp.installed(), InProcessServer(config) as srv, sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        loads, errors = [], []
        page.on("load", lambda p: loads.append(time.monotonic()))
        page.on("pageerror", lambda e: errors.append(f"script: {e}"))
        page.on("response", lambda r: r.status >= 400 and errors.append(f"HTTP {r.status} {r.url}"))
        page.goto(srv.base + "/")
        page.wait_for_function("window.worldlab && window.worldlab.stats().rtp_locked "
                               "&& window.worldlab.stats().frames > 30", timeout=30000)
        page.evaluate(RECORDER_JS, mark)
        room = page.evaluate("window.worldlab.room")
        before = srv.session(room)
        pr = PageRun(page, srv, imp)
        page.click("#video")  # focus: the page takes keys on the document
        pr.phase("warmup", warmup_s)
        pr.phase("impaired", seconds)
        recovered_s = pr.outage(outage_s)
        pr.phase("after_outage", min(10.0, seconds) if after_s is None else after_s)
        steer = pr.steer_check()
        after = srv.session(page.evaluate("window.worldlab.room"))
        if screenshot:
            pathlib.Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=screenshot)
        page_side = page.evaluate("""(mark) => { const r = window.__impaired, p = window.worldlab;
          return {mark_kept: !!r && r.mark === mark, same_pc: !!r && r.pc === p.pc, state: p.state,
                  pc: p.pc && p.pc.connectionState, states: r ? r.states : [], outage_end: r && r.outageEnd}; }""",
                                  mark)
        if on_page is not None:
            on_page(page, pr)
    t_out = (page_side["outage_end"] or 0) - 1000 * outage_s  # the outage's start on the page's clock
    states = [{**s, "t": round((s["t"] - t_out) / 1000, 2)} for s in page_side["states"]]
    return {
        "client": "page",
        "impairment": {"loss_pct": 100 * loss, "delay_ms": delay_ms, "jitter_ms": jitter_ms, "each_way": True,
                       "outage_s": outage_s, "where": "server's aioice sockets (in process)"},
        "phases": pr.phases, "g2g_ms": percentiles(pr.g2g["impaired"], (50, 95)),
        "recovered_after_outage_s": round(recovered_s, 3),
        "first_g2g_after_outage_ms": pr.g2g["after_outage"][0] if pr.g2g["after_outage"] else None,
        "reloaded": len(loads) != 1 or not page_side["mark_kept"], "page_loads": len(loads),
        "offers": srv.offers, "same_peer_connection": page_side["same_pc"] and before["pcs"] == after["pcs"]
        and before["room"] == after["room"] and after["rooms"] == 1,
        "ctl_messages_over_rate_limit": after["rate_drops"],
        "page_state_after": page_side["state"], "connection_state_after": page_side["pc"],
        "state_changes_from_outage_start_s": states, "steer_after_outage": steer,
        "server_saw_page_report": {k: after["report"].get(k) for k in ("fps_actual", "g2g_ms", "g2g_ms_p95")}
        if after["report"] else None,
        "page_errors": errors[:10]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", choices=("page", "python"), default="page",
                    help="page: the served page in Chromium; python: worldlab.transport.client.PeerClient")
    ap.add_argument("--seconds", type=float, default=20.0, help="impaired phase (and, up to 10 s, the one after)")
    ap.add_argument("--outage", type=float, default=3.0)
    ap.add_argument("--loss", type=float, default=0.02, help="fraction of datagrams dropped, each way")
    ap.add_argument("--delay", type=float, default=40.0, help="ms, each way")
    ap.add_argument("--jitter", type=float, default=10.0, help="ms (standard deviation), each way")
    ap.add_argument("--screenshot", default=None, metavar="PNG", help="page mode: the page after the outage")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.client == "page":
        out = run_page(args.seconds, args.outage, args.loss, args.delay, args.jitter, screenshot=args.screenshot)
    else:
        out = measure(args.seconds, args.outage, args.loss, args.delay, args.jitter)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
