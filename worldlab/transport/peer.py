"""Rooms and peers: one player session per room, spectators through MediaRelay, the `ctl` channel.

`PeerHub.offer(...)` turns an SDP offer into an answer; the aiohttp server and the JupyterLab widget both
call it (the widget carries the SDP over its comm instead of HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.rtcrtpsender import RTCRtpSender

from worldlab import env
from worldlab.engine import Scheduler, Session
from worldlab.model import start_session
from worldlab.transport import protocol
from worldlab.transport.track import RoomTrack

log = logging.getLogger(__name__)
ROOM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MIME = {"vp8": "video/VP8", "h264": "video/H264"}


class OfferError(ValueError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class Room:
    id: str
    session: Session
    track: RoomTrack
    relay: MediaRelay
    quality: str = "auto"
    pcs: set = field(default_factory=set)
    channels: set = field(default_factory=set)  # player + viewer ctl channels
    player_channels: set = field(default_factory=set)
    viewers: int = 0
    model: object = None  # the WorldModel (variant) this room's session runs on
    scheduler: object = None
    good_since: float = field(default_factory=time.monotonic)
    born: float = field(default_factory=time.monotonic)
    persistent: bool = False  # widget rooms outlive their views; served rooms end with their player
    on_players_gone: object = None  # called when a persistent room's last steering peer is gone
    bad_reads: int = 0


class PeerHub:
    def __init__(self, model, scheduler: Scheduler, *, codec: str = "vp8", fps: float = 30.0,
                 keyframe_interval_s: float = 0.75, seed: int = 0, stats_interval_s: float = 1.0):
        if codec not in MIME:
            raise ValueError(f"codec must be one of {tuple(MIME)}, got {codec!r}")
        self.model, self.scheduler = model, scheduler
        self.codec, self.fps, self.kf = codec, fps, keyframe_interval_s
        self.seed = seed
        self.stats_interval = stats_interval_s
        self.rooms: dict[str, Room] = {}
        self.pcs: set[RTCPeerConnection] = set()
        self._tasks: set[asyncio.Task] = set()
        self.closed = False

    # -- offers --------------------------------------------------------------------------------
    async def offer(self, sdp: str, kind: str, *, room: str | None = None, prompt: str | None = None,
                    role: str = "player", quality: str = "auto", join: bool = False) -> dict:
        """join=True adds another steering view to an existing room (the widget displayed twice)."""
        if self.closed:
            raise OfferError(503, "shutting_down", "the server is shutting down")
        if role == "viewer" or (join and room in self.rooms):
            if room not in self.rooms:
                raise OfferError(404, "unknown_room", f"no live room {room!r}")
            return await self._answer(self.rooms[room], sdp, kind, viewer=role == "viewer")
        if room is not None and room in self.rooms:
            raise OfferError(409, "room_taken", f"room {room!r} already has a player")
        r = await self.create_room(prompt, room=room, quality=quality)
        try:
            return await self._answer(r, sdp, kind, viewer=False)
        except Exception:
            await self._close_room(r)
            raise

    async def create_room(self, prompt: str | None = None, *, room: str | None = None, quality: str = "auto",
                          persistent: bool = False) -> Room:
        """A live session with its track but no peer yet: frames flow and metrics accrue (headless runs)."""
        prompt = prompt or "a walk in the forest"
        env.check_prompt(prompt)
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(None, start_session, self.model, prompt, self.seed)
        session = Session(state, prompt, fps_target=self.fps, room=room)
        r = Room(session.room, session, None, MediaRelay(), quality=quality, model=self.model,
                 scheduler=self.scheduler, persistent=persistent)
        r.track = RoomTrack(session, codec=self.codec, keyframe_interval_s=self.kf,
                            on_frame=lambda fid, pts, meta, emit: self._on_frame(r, fid, pts),
                            frame_shape=tuple(self.model.frame_shape))
        if quality in ("low", "high"):
            r.track.set_rung(quality)
        self.rooms[r.id] = r
        self.scheduler.add(session)
        self._spawn(self._stats_loop(r))
        return r

    async def switch_model(self, room: Room, model, scheduler) -> None:
        """Hot-switch a live room to another model variant, prefilled from its recent frames."""
        s = room.session
        if model is room.model:
            return
        recent = list(s.recent)
        if len(recent) < 2:
            raise ValueError("the session has not produced enough frames to switch models yet")
        frames = np.stack([f for f, _k in recent])
        actions = [k for _f, k in recent[1:]]

        def prefill():
            state = model.init_state(s.prompt)
            model.prefill(state, frames, actions)
            return state

        state = await asyncio.get_running_loop().run_in_executor(None, prefill)
        room.scheduler.detach(s)
        s.state, room.model, room.scheduler = state, model, scheduler
        scheduler.add(s)

    async def _answer(self, room: Room, sdp: str, kind: str, *, viewer: bool) -> dict:
        pc = RTCPeerConnection()
        self.pcs.add(pc)
        room.pcs.add(pc)
        transceiver = pc.addTransceiver(room.relay.subscribe(room.track, buffered=False), direction="sendonly")
        caps = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == MIME[self.codec]]
        transceiver.setCodecPreferences(caps)

        @pc.on("datachannel")
        def on_dc(channel):
            room.channels.add(channel)
            if not viewer:
                room.player_channels.add(channel)

            @channel.on("message")
            def on_message(raw):
                self._on_ctl(room, channel, raw, viewer)

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await self._drop_pc(room, pc, viewer)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self._drop_pc(room, pc, viewer)
            raise OfferError(400, "bad_sdp", f"could not negotiate the offer: {exc}") from None
        if viewer:
            room.viewers += 1
            room.track.request_keyframe()  # a new viewer must not wait for the next GOP
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                "session": room.session.id, "room": room.id, "role": "viewer" if viewer else "player"}

    # -- ctl channel ---------------------------------------------------------------------------
    def _on_ctl(self, room: Room, channel, raw, viewer: bool) -> None:
        try:
            msg = protocol.parse(raw)
            if viewer and msg.type in ("action", "prompt"):
                raise protocol.ProtocolError("forbidden", "spectators cannot steer the world")
        except protocol.ProtocolError as exc:
            self._send(channel, protocol.encode("error", code=exc.code, message=str(exc)))
            return
        s = room.session
        if msg.type == "action":
            s.set_action(msg.body["keys"], msg.seq)
        elif msg.type == "prompt":
            s.set_prompt(msg.body["text"], msg.seq)
        elif msg.type == "ping":
            self._send(channel, protocol.encode("pong", seq=msg.seq, t=msg.body["t"]))
        elif msg.type == "quality":
            room.quality = msg.body["preset"]
            if room.quality != "auto":
                room.track.set_rung(room.quality)

    def _on_frame(self, room: Room, frame_id: int, pts: int) -> None:
        for seq, fid in room.session.pop_acks():
            for ch in room.player_channels:
                self._send(ch, protocol.encode("ack", seq=seq, frame_id=fid))
        msg = protocol.encode("frame", frame_id=frame_id, pts=pts)
        for ch in room.channels:
            self._send(ch, msg)

    @staticmethod
    def _send(channel, text: str) -> None:
        if channel.readyState == "open":
            channel.send(text)

    # -- stats and adaptive quality --------------------------------------------------------------
    def stats(self, room: Room) -> dict:
        s, m = room.session, room.session.metrics
        produced = s.slot.produced
        drop_pct = 100.0 * s.slot.dropped / produced if produced else 0.0
        out = {k: v for k, v in m.summary().items() if v is not None}
        out.update({"fps_target": s.fps_target, "fps_actual": m.rate("sent"),
                    "drop_pct": drop_pct, "bitrate_kbps": m.rate("bytes") * 8 / 1000,
                    "kv_bytes": room.model.kv_bytes(s.state), "relay_pct": 0.0,
                    "rung": room.track.rung, "quality": room.quality, "viewers": room.viewers,
                    "frame_id": s.frame_id, "session": s.id, "room": room.id})
        return out

    async def _stats_loop(self, room: Room) -> None:
        while room.id in self.rooms and not self.closed:
            await asyncio.sleep(self.stats_interval)
            st = self.stats(room)
            self._adapt(room, st)
            msg = protocol.encode("stats", **st)
            for ch in list(room.channels):
                self._send(ch, msg)

    def _adapt(self, room: Room, st: dict) -> None:
        """auto: step down when frames run late or encode is slow; step back up after 5 s of health."""
        now = time.monotonic()
        if room.quality != "auto" or now - room.born < 3.0:  # the rate window still covers start-up
            return
        healthy = st["fps_actual"] >= 0.95 * st["fps_target"] and st.get("encode_ms_p95", 0) < 20
        room.bad_reads = 0 if healthy else room.bad_reads + 1
        if room.bad_reads >= 2:  # two bad seconds in a row, not one hiccup
            room.track.set_rung("low")
            room.good_since = now
        elif room.track.rung == "low" and now - room.good_since > 5.0:
            room.track.set_rung("high")

    # -- teardown ------------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop_pc(self, room: Room, pc, viewer: bool) -> None:
        if pc in room.pcs:
            room.pcs.discard(pc)
            self.pcs.discard(pc)
            if viewer:
                room.viewers = max(0, room.viewers - 1)
            await pc.close()
        if not viewer and room.id in self.rooms:
            if not room.persistent:
                await self._close_room(room)
            elif not room.pcs and room.on_players_gone is not None:
                room.on_players_gone()

    async def _close_room(self, room: Room) -> None:
        self.rooms.pop(room.id, None)
        room.scheduler.remove(room.session)
        room.track.stop()
        for pc in list(room.pcs):
            room.pcs.discard(pc)
            self.pcs.discard(pc)
            await pc.close()

    async def close(self) -> None:
        self.closed = True
        for room in list(self.rooms.values()):
            await self._close_room(room)
        for pc in list(self.pcs):
            await pc.close()
        self.pcs.clear()
        for t in list(self._tasks):
            t.cancel()
