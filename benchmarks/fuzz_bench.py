"""Fuzz a live server with hypothesis: random POST /offer bodies (JSON of every shape, mutated SDP, deep
nesting, bad UTF-8, bodies split over TCP writes and sent slowly) and random data-channel messages from a
connected player, while a witness session streams. Reports 5xx count, non-JSON errors, error codes seen,
whether the fuzzed session survived, and the witness's frame rate (oracle model, loopback).

    python benchmarks/fuzz_bench.py --offers 10000 --messages 10000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import sys
import threading
import time

import aiohttp
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worldlab.config import SessionConfig
from worldlab.engine.oracle import EnvOracle
from worldlab.server import build_app
from worldlab.server.app import HUB
from worldlab.transport.client import PeerClient

# The server under test: limits that would otherwise turn most fuzz requests into 429 / 503, and a short
# connect deadline so rooms made by still-valid mutated offers (never connected) are reaped quickly.
FUZZ_CONFIG = SessionConfig(offer_rate_per_s=1e6, offer_burst=10**6, max_sessions=64, connect_timeout_s=3.0)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                    lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=10), c, max_size=6),
                    max_leaves=25)
FIELDS = {"sdp": st.text(max_size=200) | JSON, "type": st.sampled_from(["offer", "answer", 1, None, ""]),
          "room": st.text(max_size=80) | JSON, "role": st.sampled_from(["player", "viewer", "admin", 7]),
          "prompt": st.text(max_size=600) | JSON, "preset": st.sampled_from(["auto", "low", "high", "ultra", []])}
MSG_FIELDS = {"v": st.sampled_from([1, 1, 2, "1", None]), "seq": st.integers(-5, 2**70) | JSON,
              "type": st.sampled_from(["action", "prompt", "ping", "quality", "report", "frame", "", None]),
              "keys": st.lists(st.sampled_from(["up", "down", "left", "right", "jump", ""]), max_size=6) | JSON,
              "text": st.text(max_size=600) | JSON, "t": st.floats() | JSON, "preset": JSON,
              "g2g_ms": st.floats() | JSON}


def nested(n: int, inner: str = "1") -> str:
    return "[" * n + inner + "]" * n


OFFER_BODIES = st.one_of(
    JSON.map(json.dumps), st.fixed_dictionaries({}, optional=FIELDS).map(json.dumps), st.binary(max_size=3000),
    st.integers(1, 70000).map(lambda n: "[" * n), st.integers(1, 3000).map(lambda n: '{"sdp": ' + nested(n) + "}"),
    st.text(max_size=3000))
MESSAGES = st.one_of(
    st.fixed_dictionaries({}, optional=MSG_FIELDS).map(json.dumps), JSON.map(json.dumps),
    st.binary(max_size=600), st.integers(1, 4000).map(nested), st.text(min_size=4000, max_size=6000))


def mutated_sdp(sdp: str):
    """A real offer with lines dropped, duplicated or garbled: mostly bad_sdp, sometimes still valid."""
    lines = sdp.splitlines()
    n = len(lines)
    edits = st.lists(st.tuples(st.sampled_from(["drop", "dup", "garble"]), st.integers(0, n - 1),
                               st.text(max_size=12)), min_size=1, max_size=4)

    def apply(ops):
        out = list(lines)
        for op, i, junk in ops:
            i %= len(out)
            if op == "drop" and len(out) > 1:
                out.pop(i)
            elif op == "dup":
                out.insert(i, out[i])
            else:
                out[i] = out[i][: len(out[i]) // 2] + junk
        return json.dumps({"sdp": "\r\n".join(out) + "\r\n", "type": "offer"})

    return edits.map(apply)


class Target:
    """The server and its witness on a background event loop; the fuzzers call in from this thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.call(self._start())

    def call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.app = build_app(EnvOracle(), config=FUZZ_CONFIG, host="127.0.0.1")
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.http = aiohttp.ClientSession()
        self.url = f"http://127.0.0.1:{self.port}/offer"
        self.witness, self.fuzzed = PeerClient(keep_frames=False), PeerClient(keep_frames=False)
        await self.witness.connect_http(self.http, self.url)
        await self.fuzzed.connect_http(self.http, self.url)
        spare = PeerClient(keep_frames=False)
        self.real_sdp = await spare.offer_sdp()
        await spare.close()

    async def post(self, body, pieces: int, delay_s: float) -> tuple[int, bytes]:
        raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
        if pieces == 1:
            async with self.http.post(self.url, data=raw, headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.read()
        head = (f"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n").encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            cut = [len(raw) * i // pieces for i in range(pieces + 1)]
            writer.write(head)
            for a, b in zip(cut, cut[1:]):
                await asyncio.sleep(delay_s)
                writer.write(raw[a:b])
                await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        status = int(data.split(b" ", 2)[1])
        return status, data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""

    async def send(self, msg) -> None:
        self.fuzzed.ch.send(msg)
        await asyncio.sleep(0)

    async def stop(self) -> None:
        await self.witness.close()
        await self.fuzzed.close()
        await self.http.close()
        await self.runner.cleanup()


def run(offers: int, messages: int) -> dict:
    target = Target()
    statuses, codes, non_json = collections.Counter(), collections.Counter(), []
    w0, t0 = target.witness.n_frames, time.monotonic()

    @settings(max_examples=offers, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(OFFER_BODIES, OFFER_BODIES, OFFER_BODIES, mutated_sdp(target.real_sdp)),
           st.sampled_from([1, 1, 1, 1, 1, 2, 3, 4]), st.floats(0.005, 0.05))
    def fuzz_offer(body, pieces, delay_s):  # one in five bodies arrives in 2-4 TCP writes, 5-50 ms apart
        status, raw = target.call(target.post(body, pieces, delay_s))
        statuses[status] += 1
        try:
            codes[json.loads(raw)["error"]["code"] if status >= 400 else "ok"] += 1
        except (ValueError, KeyError, TypeError):
            non_json.append((status, raw[:80]))

    @settings(max_examples=messages, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(MESSAGES)
    def fuzz_message(msg):
        target.call(target.send(msg))

    fuzz_offer()
    fuzz_message()
    elapsed = time.monotonic() - t0
    time.sleep(1.5)  # the message rate limits refill; then the fuzzed session must still answer and stream
    f0, before = target.fuzzed.n_frames, len(target.fuzzed.msgs)
    target.call(target.send(json.dumps({"v": 1, "seq": 1, "type": "ping", "t": 42.0})))
    time.sleep(1.0)
    pong = any(m.get("type") == "pong" and m.get("t") == 42.0 for m in target.fuzzed.msgs[before:])
    out = {
        "offers": offers, "messages": messages, "seconds": round(elapsed, 1),
        "http_5xx": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "http_503": statuses.get(503, 0), "non_json_errors": len(non_json), "non_json_sample": non_json[:3],
        "status_counts": dict(sorted(statuses.items())), "error_codes": dict(codes.most_common()),
        "ctl_error_codes": dict(collections.Counter(target.fuzzed.errors()).most_common()),
        "fuzzed_session_alive": pong and target.fuzzed.n_frames - f0 >= 20,
        "witness_fps": round((target.witness.n_frames - w0) / (time.monotonic() - t0), 2),
        "rooms_after": len(target.app[HUB].rooms),
    }
    target.call(target.stop())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--offers", type=int, default=10000)
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = run(args.offers, args.messages)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
