"""A Python WebRTC client of the served stream (what player.js does, minus the screen): offer, `ctl`
channel, received frames and messages. Used by benchmarks, bots and the transport tests."""

from __future__ import annotations

import asyncio
import json

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from worldlab.transport import av1

av1.register()  # so a Python client can receive an AV1 room too


def local_peer_connection() -> RTCPeerConnection:
    """A peer connection without STUN servers: aiortc's default (stun.l.google.com) costs a DNS lookup and a
    STUN exchange per connection, which stall or fail on a machine without internet; the servers our clients,
    benchmarks and tests talk to are reachable directly."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class PeerClient:
    """keep_frames=False only counts frames (no decode to arrays): cheap enough for many clients. audio=True
    also offers to receive the sound track: its decoded av.AudioFrame-s collect in `audio_frames`."""

    def __init__(self, keep_frames: bool = True, audio: bool = False):
        self.pc = local_peer_connection()
        self.pc.addTransceiver("video", direction="recvonly")
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.audio_frames: list = []
        self.ch = self.pc.createDataChannel("ctl", ordered=True)
        self.keep_frames = keep_frames
        self.msgs: list[dict] = []
        self.frames: list = []
        self.n_frames = 0
        self.seq = 0
        self.opened = asyncio.Event()
        self.ch.on("open", self.opened.set)
        self.ch.on("message", lambda m: self.msgs.append(json.loads(m)))

        @self.pc.on("track")
        def on_track(track):
            asyncio.ensure_future(self._pull(track) if track.kind == "video" else self._pull_audio(track))

    async def _pull_audio(self, track):
        while True:
            try:
                self.audio_frames.append(await track.recv())
            except Exception:
                return

    async def _pull(self, track):
        while True:
            try:
                f = await track.recv()
            except Exception:
                return
            self.n_frames += 1
            if self.keep_frames:
                self.frames.append(f.to_ndarray(format="rgb24"))

    async def offer_sdp(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, ans: dict) -> dict:
        await self.pc.setRemoteDescription(RTCSessionDescription(ans["sdp"], ans["type"]))
        await asyncio.wait_for(self.opened.wait(), 10)
        return ans

    async def connect(self, hub, **kw) -> dict:
        """In process: straight to a PeerHub."""
        sdp = await self.offer_sdp()
        return await self.accept(await hub.offer(sdp, "offer", **kw))

    async def connect_http(self, session, url: str, **body) -> dict:
        """Through `worldlab serve`'s POST /offer (an aiohttp ClientSession)."""
        sdp = await self.offer_sdp()
        async with session.post(url, json={"sdp": sdp, "type": "offer", **body}) as r:
            ans = await r.json()
            if r.status != 200:
                raise RuntimeError(f"offer refused: {r.status} {ans}")
        return await self.accept(ans)

    def send(self, **m) -> int:
        self.seq += 1
        self.ch.send(json.dumps({"v": 1, "seq": self.seq, **m}))
        return self.seq

    def errors(self) -> list[str]:
        return [m["code"] for m in self.msgs if m["type"] == "error"]

    async def wait_for(self, pred, timeout: float = 10.0) -> None:
        async def poll():
            while not pred():
                await asyncio.sleep(0.02)
        await asyncio.wait_for(poll(), timeout)

    async def close(self, timeout: float = 10.0) -> None:
        """Close, giving up after `timeout` s: a peer that vanished mid-teardown must not hang the caller."""
        try:
            await asyncio.wait_for(self.pc.close(), timeout)
        except asyncio.TimeoutError:
            pass
