"""WebRTC end to end in one event loop: an aiortc client against PeerHub (as aiortc's own tests do).

Checks frames arrive, acks come back, a prompt switch re-themes the received frames, a bad message gets
an `error` reply while the stream continues, and teardown leaves no peer or worker behind.
"""

import asyncio
import json
import threading

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from worldlab import env
from worldlab.engine import Scheduler
from worldlab.engine.oracle import EnvOracle
from worldlab.transport.peer import PeerHub


def background_color(theme):
    return np.array(env.background(theme)[0, 0], dtype=float)


class Client:
    def __init__(self):
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.ch = self.pc.createDataChannel("ctl", ordered=True)
        self.msgs = []
        self.frames = []
        self.seq = 0
        self.opened = asyncio.Event()
        self.ch.on("open", self.opened.set)
        self.ch.on("message", lambda m: self.msgs.append(json.loads(m)))

        @self.pc.on("track")
        def on_track(track):
            asyncio.ensure_future(self._pull(track))

    async def _pull(self, track):
        while True:
            try:
                f = await track.recv()
            except Exception:
                return
            self.frames.append(f.to_ndarray(format="rgb24"))

    async def connect(self, hub, **kw):
        await self.pc.setLocalDescription(await self.pc.createOffer())
        ans = await hub.offer(self.pc.localDescription.sdp, self.pc.localDescription.type, **kw)
        await self.pc.setRemoteDescription(RTCSessionDescription(ans["sdp"], ans["type"]))
        await asyncio.wait_for(self.opened.wait(), 10)
        return ans

    def send(self, **m):
        self.seq += 1
        self.ch.send(json.dumps({"v": 1, "seq": self.seq, **m}))
        return self.seq

    async def wait_for(self, pred, timeout=10.0):
        async def poll():
            while not pred():
                await asyncio.sleep(0.02)
        await asyncio.wait_for(poll(), timeout)


def dominant_is(frame, theme):
    # The 64x64 frame is upscaled; its top-left pixel is background (the pillar is at x 40..47).
    return np.abs(frame[2, 2].astype(float) - background_color(theme)).max() < 24  # VP8 chroma loss


@pytest.mark.timeout(90)
async def test_frames_acks_prompt_switch_and_bad_messages():
    sched = Scheduler(EnvOracle(seed=3)).start()
    hub = PeerHub(sched.model, sched, fps=30.0)
    client = Client()
    try:
        ans = await client.connect(hub, prompt="a sunny desert")
        assert ans["type"] == "answer" and ans["role"] == "player"
        await client.wait_for(lambda: len(client.frames) >= 10)
        assert dominant_is(client.frames[-1], "desert")

        seq = client.send(type="action", keys=["right"], t=0)
        await client.wait_for(lambda: any(m["type"] == "ack" and m["seq"] == seq for m in client.msgs))
        ack = next(m for m in client.msgs if m["type"] == "ack" and m["seq"] == seq)
        assert isinstance(ack["frame_id"], int) and ack["frame_id"] >= 0
        # The acked frame (or a newer one) is announced on the channel, so the page can map it.
        await client.wait_for(lambda: any(m["type"] == "frame" and m["frame_id"] >= ack["frame_id"]
                                          for m in client.msgs))

        client.send(type="ping", t=123.5)
        await client.wait_for(lambda: any(m["type"] == "pong" and m["t"] == 123.5 for m in client.msgs))

        n_before = len(client.frames)
        client.send(type="action", keys=["jump"])  # not a key
        client.ch.send("{not json")
        client.ch.send(json.dumps({"v": 1, "seq": 99, "type": "teleport"}))
        client.ch.send("x" * 5000)
        await client.wait_for(lambda: sum(m["type"] == "error" for m in client.msgs) >= 4)
        codes = [m["code"] for m in client.msgs if m["type"] == "error"]
        assert codes == ["bad_field", "bad_json", "unknown_type", "too_large"]
        await client.wait_for(lambda: len(client.frames) >= n_before + 10)  # the stream went on

        client.send(type="prompt", text="a snowy night")  # first theme word wins: snow
        await client.wait_for(lambda: dominant_is(client.frames[-1], "snow"), timeout=5)
        await client.wait_for(lambda: any(m["type"] == "stats" for m in client.msgs), timeout=5)
        stats = next(m for m in client.msgs if m["type"] == "stats")
        for k in ("fps_target", "fps_actual", "drop_pct", "bitrate_kbps", "kv_bytes", "model_ms", "encode_ms"):
            assert k in stats
    finally:
        await client.pc.close()
        await hub.close()
        sched.stop()
    assert not hub.pcs and not hub.rooms and not sched.alive
    assert not [t for t in threading.enumerate() if t.name == "worldlab-model"]
