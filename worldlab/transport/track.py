"""RoomTrack: an aiortc video track paced by the session clock, fed from the latest-frame slot.

recv() never runs the model: it waits for the next pacing instant, takes the newest frame (repeating the
last one when the model is late), upscales it to the quality rung (worldlab.transport.quality), watermarks it,
encodes once (in a worker thread) and returns the packet; MediaRelay hands the same packet to the player and
every spectator.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from worldlab.engine.metrics import percentile
from worldlab.engine.session import Session
from worldlab.telemetry import Sent, notify
from worldlab.transport.encoder import RoomEncoder
from worldlab.transport.quality import LADDER, Ladder, upscale

log = logging.getLogger(__name__)
VIDEO_CLOCK = 90_000
LAND_EARLY_S = 0.002  # the pacing instant leads the model's expected landing by this: an early frame waits <= it
# Steady send: a packet is held to its tick's due instant + this quantile of the recent (due -> encoded) lags.
# p90, not the max: one slow step would otherwise delay every frame after it; the slower tenth goes at once
# (late) and stays under a 20 ms interval at 60 fps. ~2 s of frames at 60 fps: follows a load change quickly.
SEND_QUANTILE = 0.9
LAG_WINDOW = 120
IDLE_PERIOD_S = 0.5  # an idle track (every peer silent) sends a frame this often: a live receiver answers with RTCP


class RoomTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session: Session, *, codec: str = "vp8", keyframe_interval_s: float = 0.75,
                 on_frame=None, frame_shape=(64, 64, 3), watermark=None, on_packet=None, observers=(),
                 ladder: Ladder = LADDER, steady_send: bool = False):
        """watermark: callable (H, W, 3) uint8 -> uint8 applied to each upscaled frame before encoding
        (worldlab.security.watermark.Embedder for the session's id), or None. on_packet: callback(av.Packet)
        for every encoded packet (the triage buffer), or None. observers: worldlab.telemetry.Observer-s told
        of every new model frame sent (`frame`). ladder: the quality rungs (the track starts on the top one).
        steady_send: hold each new frame's packet to a steady instant (`_hold`; SessionConfig.steady_send_min_fps)."""
        super().__init__()
        self.session = session
        self.encoder = RoomEncoder(codec, fps=session.fps_target, keyframe_interval_s=keyframe_interval_s)
        self.on_frame = on_frame  # callback(frame_id, pts, meta, emit_time) on the event loop
        self.sound = None  # the room's worldlab.engine.audio.SoundScore: told of each new frame at its pts instant
        self.watermark = watermark
        self.on_packet = on_packet
        self.observers = tuple(observers)
        self.ladder = ladder
        self.rung = ladder.top.name
        self.frame_shape = frame_shape
        self.sent = 0
        self.frame_id: int | None = None  # the model frame in the packet recv() returned last (None: none yet)
        self.repeats = 0
        self._next_at: float | None = None
        self._landed: asyncio.Event | None = None  # set (via the loop) each time the model puts a frame
        self._on_landed = None
        self._last = None
        self._force_key = False
        self._sent_seq = -1  # newest input seq among the frames sent so far
        self.steady_send = steady_send
        self._lags: collections.deque = collections.deque(maxlen=LAG_WINDOW)  # (due -> encoded) seconds
        self.idle = False  # every peer silent (PeerHub): one frame per IDLE_PERIOD_S
        self._resume: asyncio.Event | None = None  # set when the track leaves idle

    def set_rung(self, rung: str) -> None:
        """A rung name of the ladder, or low / high (its bottom / top)."""
        self.rung = self.ladder[rung].name

    def request_keyframe(self) -> None:
        self._force_key = True

    def set_idle(self, idle: bool) -> None:
        """Idle: nobody is listening (PeerHub: no RTCP from any peer for SessionConfig.peer_silence_s), so one
        frame per IDLE_PERIOD_S, which a receiver that is still there answers with a report. Leaving idle sends
        the next frame at once, as a keyframe (the receiver may have lost the frames between)."""
        if idle == self.idle:
            return
        self.idle = idle
        if not idle:
            self.request_keyframe()
            if self._resume is not None:
                self._resume.set()

    async def _idle_wait(self) -> None:
        if self._resume is None:
            self._resume = asyncio.Event()
        self._resume.clear()
        try:
            await asyncio.wait_for(self._resume.wait(), IDLE_PERIOD_S)
        except TimeoutError:
            pass

    async def _pace(self) -> None:
        """Send as soon as the model's next frame lands (no phase delay), but not before the pacing instant
        unless the frame answers new input (an early tick: worldlab.engine.scheduler), and never later than
        half a period past it (then the last frame is repeated)."""
        loop = asyncio.get_running_loop()
        if self._next_at is None:
            await loop.run_in_executor(None, self.session.slot.wait_first, 5.0)
            self._next_at = time.monotonic()
            self._listen(loop)
            return
        deadline = self._next_at + 0.5 / self.session.fps_target
        while True:
            self._landed.clear()  # before the check: a frame landing after it sets the event again
            now = time.monotonic()
            seq = self.session.slot.new_seq()
            if (seq is not None and (now >= self._next_at or seq > self._sent_seq)) or now >= deadline:
                return
            try:
                await asyncio.wait_for(self._landed.wait(), (self._next_at if now < self._next_at else deadline) - now)
            except TimeoutError:
                pass

    def _release_at(self, meta) -> float | None:
        """The steady send instant of a new frame: its tick's due instant + the SEND_QUANTILE of the recent
        (due -> encoded) lags (None: no hold, or no lag known yet)."""
        if not self.steady_send or meta is None or meta.due_at is None or not self._lags:
            return None
        return meta.due_at + percentile(self._lags, SEND_QUANTILE * 100)

    async def _hold(self, meta, release_at: float | None) -> None:
        """Record this frame's lag, then wait until release_at; a packet already later than it goes at once."""
        now = time.monotonic()
        if meta is not None and meta.due_at is not None:
            self._lags.append(now - meta.due_at)
        if release_at is not None and release_at > now:
            await asyncio.sleep(release_at - now)

    def _listen(self, loop) -> None:
        """Be woken by the model thread the moment a frame lands (no 1 ms polling per session)."""
        self._landed = asyncio.Event()

        def landed() -> None:
            try:
                loop.call_soon_threadsafe(self._landed.set)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                self.session.slot.unlisten(landed)

        self._on_landed = landed
        self.session.slot.listen(landed)

    def stop(self) -> None:
        if self._on_landed is not None:
            self.session.slot.unlisten(self._on_landed)
        super().stop()

    async def recv(self):
        if self.readyState != "live" or self.session.closed or self.session.fault is not None:
            raise MediaStreamError
        if self.idle:
            await self._idle_wait()
        await self._pace()
        period = 1.0 / self.session.fps_target
        frame, meta, new = self.session.slot.take()
        # Phase-locked to the model: the next instant is when its next frame should land (this one's production
        # + a period, a little early). A free-running grid of its own phase let each frame wait in the slot for
        # up to a period (17 ms on average) before it was sent. max(): no bursts after a stall.
        landing = meta.produced_at + period - LAND_EARLY_S if new and meta is not None else self._next_at + period
        self._next_at = max(landing, time.monotonic() - period)
        taken = time.monotonic()
        if frame is None:
            frame = np.zeros(self.frame_shape, np.uint8) if self._last is None else self._last[0]
            meta = None if self._last is None else self._last[1]
        elif not new:
            self.repeats += 1
        self._last = (frame, meta)
        self.frame_id = None if meta is None else meta.frame_id
        rung = self.ladder[self.rung]
        emit = time.monotonic()
        release_at = self._release_at(meta) if new else None  # from the lags before this frame's
        if self.sound is not None and new and meta is not None:
            # Its click and pitch start where the video leaves: the steady instant when held, else this one.
            self.sound.shown(meta.frame_id, emit if release_at is None else max(emit, release_at))
        # pts stays the emit instant (not the steady one): its real-time jitter lets the page lock the RTP origin
        # (a steady pts matches a period-shifted origin as well), and g2g is timed on the page, not from pts.
        pts = int((emit - self.session.origin) * VIDEO_CLOCK)
        force, self._force_key = self._force_key, False
        t0 = time.monotonic()
        packet = await self._encode(frame, rung, pts, force)
        t1 = time.monotonic()
        self.session.metrics.add("encode_ms", (t1 - t0) * 1000)
        if self.steady_send and new:
            await self._hold(meta, release_at)
        self.session.metrics.event("bytes", packet.size)
        if self.on_packet is not None:
            self.on_packet(packet)
        if new:  # fps_actual counts new model frames only; repeats (a late model) do not count
            self.session.metrics.event("sent")
        self.sent += 1
        if self.on_frame is not None and meta is not None:
            self.on_frame(meta.frame_id, pts, meta, emit)
        if new and meta is not None:
            if self.observers:
                sent = Sent(meta, taken, t0, t1, time.monotonic(), new_input=meta.seq > self._sent_seq)
                notify(self.observers, "frame", self.session, sent)
            self._sent_seq = max(self._sent_seq, meta.seq)
        return packet

    def _upscale_mark_encode(self, frame, rung, pts: int, force: bool):
        big = upscale(frame, rung.height)
        if self.watermark is not None:
            big = self.watermark(big)  # after upscaling: the mark is laid out on the frame that is encoded
        return self.encoder.encode(big, pts, rung.bitrate, force)

    async def _encode(self, frame, rung, pts: int, force: bool):
        """The packet, upscaled, watermarked and encoded on a worker thread (per frame and room, the upscale and
        the mark cost about what the encode does: on the event loop they delayed every room's sends under load).
        A failed encode (an exception, or no packet where one is due) ends the session with `encoder_failed`:
        its viewers are told and the room closes (re-opening would hide a broken codec)."""
        try:
            packet = await asyncio.get_running_loop().run_in_executor(None, self._upscale_mark_encode, frame, rung,
                                                                      pts, force)
        except Exception as exc:
            log.warning("encoder of session %s failed: %s: %s", self.session.id, type(exc).__name__, exc)
            packet = None
        if packet is None:
            self.session.fail("encoder_failed", "the video encoder failed; the session has ended")
            raise MediaStreamError
        return packet


async def rtcp_reports(pcs, seen: dict) -> list[tuple[object, float | None]]:
    """(pc, round-trip ms or None) for each RTCP receiver report about a video sender of `pcs` that is new since
    `seen` (which this updates), from any client: aiortc's remote-inbound-rtp stats, whose timestamp changes
    with each report, and its smoothed RTT (None until a report echoes a sender report)."""
    out = []
    for pc in list(pcs):
        for sender in pc.getSenders():
            try:
                report = await sender.getStats()
            except Exception:  # a sender torn down under us has no stats: no report
                continue
            for st in report.values():
                if st.type == "remote-inbound-rtp" and seen.get(st.id) != st.timestamp:
                    seen[st.id] = st.timestamp
                    rtt = getattr(st, "roundTripTime", None)
                    out.append((pc, None if rtt is None else rtt * 1000))
    return out
