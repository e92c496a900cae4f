"""Streaming benchmark: real Chromium against `worldlab serve` (fps, pacing, glass-to-glass by stage,
offer -> first frame), the WebCodecs fallback (H.264 over a WebSocket), the JPEG-over-WebSocket baseline, and
how many 30-fps sessions the machine holds.

    python benchmarks/stream_bench.py --model tiny --seconds 60 --json
Prints figures; asserts nothing (a slow machine must not fail a test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.browser import chromium_browser, free_port, running  # noqa: E402
from worldlab.engine.metrics import percentiles  # noqa: E402
from worldlab.transport.client import local_peer_connection

BUDGET = {"capture_ms": "20-40", "model_ms": "16-33", "encode_ms": "8-20", "network_ms": "60-120",
          "decode_ms": "20-40", "g2g_ms": "< 400"}
KEYS = ["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"]


def pcts(values) -> dict:
    return percentiles([v for v in values if v is not None], (50, 95))


def serve_argv(port: int, model: str, extra=()) -> list[str]:
    return [sys.executable, "-m", "worldlab.cli", "serve", "--model", model, "--port", str(port), *extra]


def press_keys(page, seconds: float) -> None:
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        key = KEYS[i % 4]
        page.keyboard.down(key)
        page.wait_for_timeout(250)
        page.keyboard.up(key)
        page.wait_for_timeout(250)
        i += 1


# Chrome's own counters for the received video (inbound-rtp): what arrived and was decoded, whether or not
# the page's compositor presented it (headless Chromium presents at most one frame per vsync).
INBOUND = """async () => { let out = null; (await window.worldlab.pc.getStats()).forEach(s => {
  if (s.type === 'inbound-rtp' && s.kind === 'video') out = {received: s.framesReceived, decoded: s.framesDecoded,
    dropped: s.framesDropped, ifd: s.totalInterFrameDelay, ifd2: s.totalSquaredInterFrameDelay}; }); return out; }"""


def decoded_cadence(a: dict, b: dict, dt: float) -> dict:
    """Frames received/decoded per second between two inbound-rtp samples, and the decoded frames' interval
    mean and standard deviation (ms) from Chrome's running sums."""
    n = b["decoded"] - a["decoded"]
    s1, s2 = b["ifd"] - a["ifd"], b["ifd2"] - a["ifd2"]
    mean = s1 / n if n else None
    return {"received_fps": (b["received"] - a["received"]) / dt, "decoded_fps": n / dt,
            "decoder_dropped": (b["dropped"] or 0) - (a["dropped"] or 0),
            "interval_ms_mean": mean * 1000 if n else None,
            "interval_ms_std": (max(0.0, s2 / n - mean ** 2) ** 0.5) * 1000 if n else None}


def send_intervals(spans_path: str, t0_ns: int) -> dict:
    """p50/p95/p99 of the server's frame-to-frame send interval (ms), from the `send` spans of
    `serve --otel-jsonl` that ended after t0_ns: the stream's cadence as it leaves the server."""
    ends = sorted(s["end_ns"] for s in map(json.loads, open(spans_path)) if s["name"] == "send" and s["end_ns"] >= t0_ns)
    return percentiles(list(np.diff(ends) / 1e6), (50, 95, 99))


def webrtc_run(pw, model: str, seconds: float, fps: float = 30.0, extra=()) -> dict:
    port = free_port()
    spans = tempfile.mktemp(suffix=".spans.jsonl")
    argv = serve_argv(port, model, ("--fps", f"{fps:g}", "--otel-jsonl", spans, *extra))
    with running(argv, port, tempfile.mktemp(suffix=".log")), chromium_browser(pw) as ctx:
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("window.worldlab && window.worldlab.stats().rtp_locked", timeout=30000)
        page.wait_for_timeout(2000)  # the model is warm now: measure offer -> first frame on a fresh offer
        page.click("#reconnect")
        page.wait_for_function("window.worldlab.stats().first_frame_ms !== null && window.worldlab.stats().rtp_locked",
                               timeout=30000)
        first_frame = page.evaluate("window.worldlab.stats().first_frame_ms")
        page.evaluate("window.worldlab.historyLimit = 1e9; for (const k in window.worldlab.samples) window.worldlab.samples[k] = []")
        page.locator("body").click()
        in0, t0_ns = page.evaluate(INBOUND), time.time_ns()
        f0, n0, t0 = page.evaluate("window.worldlab.frames"), page.evaluate("window.worldlab.newFrames || 0"), time.monotonic()
        press_keys(page, seconds)
        f1, n1, dt = page.evaluate("window.worldlab.frames"), page.evaluate("window.worldlab.newFrames || 0"), time.monotonic() - t0
        in1 = page.evaluate(INBOUND)
        samples = page.evaluate("window.worldlab.samples")
        st = page.evaluate("window.worldlab.stats()")
        server = st["server"]
    g2g = pcts(samples["g2g_ms"])
    sent = send_intervals(spans, t0_ns)  # the server has exited: its span exporter has flushed
    return {
        "fps_actual": (f1 - f0) / dt, "fps_new_frames": (n1 - n0) / dt, "seconds": dt, "fps_target": server.get("fps_target"),
        "server_fps_actual": server.get("fps_actual"), "server_send_interval_ms": sent,
        "chrome_inbound": decoded_cadence(in0, in1, dt),
        "drop_pct": server.get("drop_pct"), "interval_ms_p95": pcts(samples["interval_ms"])["p95"],
        "g2g_ms": g2g, "offer_to_first_frame_ms": first_frame,
        "stages_ms_p50": {"capture_ms": pcts(samples["capture_ms"])["p50"], "queue_ms": server.get("queue_ms"),
                          "model_ms": server.get("model_ms"), "encode_ms": server.get("encode_ms"),
                          "rtt_ms": pcts(samples["rtt_ms"])["p50"], "decode_ms": pcts(samples["decode_ms"])["p50"]},
        "bitrate_kbps": server.get("bitrate_kbps"), "bytes_per_s": (server.get("bitrate_kbps") or 0) * 125,
        "resolution": [st["width"], st["height"]], "dropped_video_frames": st["dropped_frames"],
        "relay_pct": server.get("relay_pct"),
    }


def relay_run(pw, model: str, seconds: float) -> dict:
    """The WebRTC run again with the page forced through a local coturn (relay-only): the relay's cost."""
    from worldlab.transport.turnserver import LocalTurn

    with LocalTurn() as turn, tempfile.NamedTemporaryFile("w", suffix=".json") as cfg:
        json.dump(turn.config("relay"), cfg)
        cfg.flush()
        return webrtc_run(pw, model, seconds, extra=("--config", cfg.name))


def webcodecs_run(pw, model: str, seconds: float, fps: float = 30.0) -> dict:
    """The served page on its WebCodecs fallback (?transport=ws: H.264 access units over a WebSocket, VideoDecoder
    onto a canvas): the same keys and the same g2g definition, painted at requestAnimationFrame time."""
    port = free_port()
    with running(serve_argv(port, model, ("--fps", f"{fps:g}")), port, tempfile.mktemp(suffix=".log")), \
            chromium_browser(pw) as ctx:
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/?transport=ws")
        try:
            page.wait_for_function("window.worldlab && window.worldlab.stats().frames > 30", timeout=30000)
        except Exception:  # say what the page saw
            raise RuntimeError("no WebCodecs frames: " + page.evaluate(
                "JSON.stringify({st: window.worldlab.stats(), close: window.worldlab.lastSocketClose, "
                "decode: window.worldlab.lastDecodeError, err: window.worldlab.lastError})")) from None
        page.wait_for_timeout(2000)  # warm: measure socket -> first painted frame on a fresh socket
        page.click("#reconnect")
        page.wait_for_function("window.worldlab.stats().first_frame_ms !== null && window.worldlab.stats().frames > 5",
                               timeout=30000)
        first_frame = page.evaluate("window.worldlab.stats().first_frame_ms")
        page.evaluate("window.worldlab.historyLimit = 1e9; for (const k in window.worldlab.samples) window.worldlab.samples[k] = []")
        page.locator("body").click()
        f0, n0, t0 = page.evaluate("window.worldlab.frames"), page.evaluate("window.worldlab.newFrames || 0"), time.monotonic()
        press_keys(page, seconds)
        f1, n1, dt = page.evaluate("window.worldlab.frames"), page.evaluate("window.worldlab.newFrames || 0"), time.monotonic() - t0
        samples = page.evaluate("window.worldlab.samples")
        st = page.evaluate("window.worldlab.stats()")
    server = st["server"]
    return {
        "transport": st["transport"], "fps_actual": (f1 - f0) / dt, "fps_new_frames": (n1 - n0) / dt, "seconds": dt,
        "server_fps_actual": server.get("fps_actual"), "drop_pct": server.get("drop_pct"),
        "interval_ms_p95": pcts(samples["interval_ms"])["p95"], "g2g_ms": pcts(samples["g2g_ms"]),
        "g2g_samples": len(samples["g2g_ms"]), "socket_to_first_frame_ms": first_frame,
        "stages_ms_p50": {"capture_ms": pcts(samples["capture_ms"])["p50"], "queue_ms": server.get("queue_ms"),
                          "model_ms": server.get("model_ms"), "encode_ms": server.get("encode_ms"),
                          "rtt_ms": pcts(samples["rtt_ms"])["p50"], "decode_ms": pcts(samples["decode_ms"])["p50"]},
        "bitrate_kbps": server.get("bitrate_kbps"), "resolution": [st["width"], st["height"]],
    }


def jpeg_run(pw, model_name: str, seconds: float) -> dict:
    from aiohttp import web

    from benchmarks.jpeg_baseline import build_jpeg_app
    from worldlab.commands.serve_cmd import build_model

    from worldlab.cli import build_parser

    model = build_model(build_parser().parse_args(["serve", "--model", model_name]))  # serve's own defaults
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_jpeg_app(model))

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        loop.run_forever()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        with chromium_browser(pw) as ctx:
            page = ctx.new_page()
            for _ in range(50):
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:
                    time.sleep(0.1)
            page.wait_for_function("window.jpeg && window.jpeg.frames > 30", timeout=30000)
            page.locator("canvas").click()
            page.evaluate("window.jpeg.g2g = []; window.jpeg.bytes = 0; window.jpeg.frames = 0")
            t0 = time.monotonic()
            press_keys(page, seconds)
            dt = time.monotonic() - t0
            st = page.evaluate("({g2g: window.jpeg.g2g, bytes: window.jpeg.bytes, frames: window.jpeg.frames})")
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        th.join(5)
    return {"g2g_ms": pcts(st["g2g"]), "bytes_per_s": st["bytes"] / dt, "fps_actual": st["frames"] / dt}


async def _client(base: str, frames: list, stop: asyncio.Event):
    import aiohttp
    from aiortc import RTCSessionDescription

    pc = local_peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("ctl")

    @pc.on("track")
    def on_track(track):
        async def pull():
            while not stop.is_set():
                try:
                    await track.recv()
                except Exception:
                    return
                frames.append(time.monotonic())
        asyncio.ensure_future(pull())

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
            ans = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(ans["sdp"], ans["type"]))
    await stop.wait()
    await pc.close()


def concurrency(model: str, max_sessions: int, micro_batching: bool, hold_s: float = 8.0) -> dict:
    """Largest N whose every session is served at >= 29 fps (server-side frames sent per second)."""
    port = free_port()
    extra = () if micro_batching else ("--no-micro-batching",)
    results = {}
    best = 0
    with running(serve_argv(port, model, extra), port, tempfile.mktemp(suffix=".log")):
        base = f"http://127.0.0.1:{port}"
        for n in range(1, max_sessions + 1):
            async def trial():
                stop = asyncio.Event()
                frames = [[] for _ in range(n)]
                tasks = [asyncio.ensure_future(_client(base, frames[i], stop)) for i in range(n)]
                await asyncio.sleep(3.0 + 0.3 * n)  # connect and settle
                await asyncio.sleep(hold_s)
                text = urllib.request.urlopen(base + "/metrics").read().decode()
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                return [float(line.split()[-1]) for line in text.splitlines()
                        if line.startswith("worldlab_fps_actual{")]
            fps = asyncio.run(trial())
            results[n] = {"min_fps": min(fps) if fps else 0.0, "mean_fps": float(np.mean(fps)) if fps else 0.0}
            if len(fps) < n or min(fps) < 29.0:
                break
            best = n
            time.sleep(1.0)
    return {"max_sessions_at_29fps": best, "per_n": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny", choices=["tiny", "oracle"])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=30.0, help="the served frame rate of the WebRTC run (e.g. 60)")
    ap.add_argument("--max-sessions", type=int, default=12)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: webrtc,webcodecs,jpeg,relay,concurrency")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    from playwright.sync_api import sync_playwright

    out = {"model": args.model, "budget_ms": BUDGET, "machine": "2-core x86_64 CPU, no GPU, loopback"}
    with sync_playwright() as pw:
        if "webrtc" not in skip:
            out["webrtc"] = webrtc_run(pw, args.model, args.seconds, args.fps)
        if "webcodecs" not in skip:
            out["webcodecs_ws"] = webcodecs_run(pw, args.model, args.seconds, args.fps)
        if "jpeg" not in skip:
            out["jpeg_ws"] = jpeg_run(pw, args.model, args.seconds)
        if "relay" not in skip:
            out["webrtc_turn_relay"] = relay_run(pw, args.model, args.seconds)
    if "concurrency" not in skip:
        out["concurrency"] = {"micro_batching": concurrency(args.model, args.max_sessions, True),
                              "sequential": concurrency(args.model, args.max_sessions, False)}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
