"""A session over an impaired network: 2 % loss, 40 ms delay, 10 ms jitter each way, then a 3 s outage.
Reports fps per phase, glass-to-glass (key sent -> first decoded frame at or after the frame that applied
it), and whether the stream comes back after the outage without a new offer (`worldlab serve`, oracle).

This kernel has no sch_netem (tc netem is not available here), so the impairment is applied inside the
client's UDP sockets (aioice's StunProtocol: every datagram in and out, RTP, RTCP, DTLS, STUN alike).

    python benchmarks/impair_bench.py --seconds 20 --json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import pathlib
import sys
import tempfile
import time

import aiohttp
import aioice.ice
import numpy as np

from worldlab.transport.client import PeerClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` runs too
from benchmarks.serving import serving  # noqa: E402


class Impairment:
    """netem-like conditions for every aioice socket in this process (the server runs in another)."""

    def __init__(self, loss: float, delay_ms: float, jitter_ms: float, seed: int = 0):
        self.loss, self.delay, self.jitter = loss, delay_ms / 1000, jitter_ms / 1000
        self.outage_until = 0.0
        self.rng = random.Random(seed)
        self.sent = self.dropped = 0

    def _fate(self) -> float | None:
        """Seconds to hold a datagram, or None to drop it."""
        self.sent += 1
        if time.monotonic() < self.outage_until or self.rng.random() < self.loss:
            self.dropped += 1
            return None
        return max(0.0, self.rng.gauss(self.delay, self.jitter))

    @contextlib.contextmanager
    def installed(self):
        """Impair every aioice socket opened inside the block (then restore aioice as it was)."""
        imp, proto = self, aioice.ice.StunProtocol
        orig_received, orig_made = proto.datagram_received, proto.connection_made

        def datagram_received(self, data, addr):
            hold = imp._fate()
            if hold is not None:
                asyncio.get_running_loop().call_later(hold, orig_received, self, data, addr)

        class Transport:  # wraps the socket's transport: outgoing datagrams get the same fate
            def __init__(self, inner):
                self._inner = inner

            def sendto(self, data, addr=None):
                hold = imp._fate()
                if hold is not None:
                    asyncio.get_running_loop().call_later(hold, self._send_later, data, addr)

            def _send_later(self, data, addr):
                if not self._inner.is_closing():  # the connection may have closed while it was held
                    self._inner.sendto(data, addr)

            def __getattr__(self, name):
                return getattr(self._inner, name)

        def connection_made(self, transport):
            orig_made(self, transport)
            self.transport = Transport(transport)

        proto.datagram_received, proto.connection_made = datagram_received, connection_made
        try:
            yield self
        finally:
            proto.datagram_received, proto.connection_made = orig_received, orig_made


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
            imp.outage_until = time.monotonic() + outage_s
            await phase("outage", outage_s, keys=False)
            t_back, n_back = time.monotonic(), client.n_frames
            await client.wait_for(lambda: client.n_frames >= n_back + 10, timeout=30)
            recovered_s = time.monotonic() - t_back
            await phase("after_outage", min(10.0, seconds))
            await client.close()
    return {"impairment": {"loss_pct": 100 * loss, "delay_ms": delay_ms, "jitter_ms": jitter_ms, "each_way": True,
                           "outage_s": outage_s},
            "phases": phases, "g2g_ms": {"p50": float(np.percentile(g2g, 50)) if g2g else None,
                                         "p95": float(np.percentile(g2g, 95)) if g2g else None, "n": len(g2g)},
            "recovered_after_outage_s": round(recovered_s, 2), "same_peer_connection": True}


def measure(seconds: float = 20.0, outage_s: float = 3.0, loss: float = 0.02, delay_ms: float = 40.0,
            jitter_ms: float = 10.0) -> dict:
    with tempfile.TemporaryDirectory() as work, serving(work) as (base, _proc):
        return asyncio.run(run(seconds, outage_s, int(base.rsplit(":", 1)[1]), loss, delay_ms, jitter_ms))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--outage", type=float, default=3.0)
    ap.add_argument("--loss", type=float, default=0.02, help="fraction of datagrams dropped, each way")
    ap.add_argument("--delay", type=float, default=40.0, help="ms, each way")
    ap.add_argument("--jitter", type=float, default=10.0, help="ms (standard deviation), each way")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = measure(args.seconds, args.outage, args.loss, args.delay, args.jitter)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
