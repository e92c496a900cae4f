"""RoomAudioTrack: the room's sound (worldlab.engine.audio.SoundScore) as an aiortc audio track, 20 ms frames
paced by the session's monotonic clock, pts in samples from the same origin as the video's pts.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from worldlab.engine.audio import FRAME_SAMPLES, SAMPLE_RATE, SoundScore
from worldlab.engine.session import Session
from worldlab.transport import opus

TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
opus.enable()  # low-delay Opus (aiortc's default is VoIP, 4 ms more look-ahead)


class RoomAudioTrack(MediaStreamTrack):
    """Frame k holds samples [k, k + 1) x FRAME_SAMPLES after the session's origin and is returned once its last
    instant has passed, so every video frame sent within it has placed its click (the video track calls
    `SoundScore.shown` on the same event loop, at its pts instant). Frames are never skipped, only sent late
    and back to back after a stall: aiortc's Opus encoder numbers RTP timestamps by counting samples, so a
    gap would shift the audio clock against the video's for the rest of the session."""

    kind = "audio"

    def __init__(self, session: Session, score: SoundScore):
        super().__init__()
        self.session, self.score = session, score
        self._next: int | None = None  # index of the next frame
        self.sent = 0

    async def recv(self) -> av.AudioFrame:
        s = self.session
        if self.readyState != "live" or s.closed or s.fault is not None:
            raise MediaStreamError
        if self._next is None:
            self._next = self.score.sample_at(time.monotonic()) // FRAME_SAMPLES
        k, self._next = self._next, self._next + 1
        ends = s.origin + (k + 1) * FRAME_SAMPLES / SAMPLE_RATE
        delay = ends - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        samples = self.score.render(k * FRAME_SAMPLES, FRAME_SAMPLES)  # (FRAME_SAMPLES,) int16
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, k * FRAME_SAMPLES, TIME_BASE
        self.sent += 1
        return frame
