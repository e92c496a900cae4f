"""One encoder per room (VP8 default, H.264 and AV1 options): the player and every spectator get the same packets.

Encoding here rather than inside each aiortc sender gives one encode for many viewers (MediaRelay then
forwards packets), a fixed keyframe interval, bitrate presets, and a direct encode_ms measurement.
"""

from __future__ import annotations

import fractions
import os
import threading

import av
from av.video.reformatter import VideoReformatter
import numpy as np

CODECS = {"vp8": "libvpx", "h264": "libx264", "av1": "libsvtav1"}
TIME_BASE = fractions.Fraction(1, 90_000)
_REAL_TIME = {getattr(os, name) for name in ("SCHED_FIFO", "SCHED_RR") if hasattr(os, name)}


def _policies() -> dict[int, tuple[int, int]]:
    """{thread id: (scheduling policy, priority)} of every thread of this process (Linux only)."""
    found = {}
    for name in os.listdir("/proc/self/task"):
        try:
            found[int(name)] = os.sched_getscheduler(int(name)), os.sched_getparam(int(name)).sched_priority
        except OSError:  # the thread ended meanwhile
            pass
    return found


def open_time_shared(ctx: av.CodecContext) -> None:
    """Open an encoder, then give back the scheduling policy the open took from this process's threads.

    SVT-AV1 (libsvtav1) switches the thread that opens it to SCHED_FIFO priority 99 whenever the process
    runs as root (a bare geteuid() check in svt_av1_enc_init_handle; no option turns it off), and the worker
    threads it starts during the open (16 here) inherit that, as would every thread the opener (a shared
    executor thread) starts later. Busy real-time threads starve the model and event-loop threads on two
    cores. So every thread the open made real-time goes back to the policy it had before (a thread the open
    created: the opener's), which keeps a deliberate `chrt`. Not Linux, or not permitted: just the open."""
    try:
        before = _policies()
    except (OSError, AttributeError):  # no /proc/self/task or no os.sched_* (not Linux)
        before = None
    ctx.open()
    if before is None:
        return
    opener = before.get(threading.get_native_id(), (os.SCHED_OTHER, 0))
    for tid, now in _policies().items():
        was = before.get(tid, opener)
        if now[0] in _REAL_TIME and now != was:
            try:
                os.sched_setscheduler(tid, was[0], os.sched_param(was[1]))
            except OSError:  # not permitted, or the thread ended
                pass


class RoomEncoder:
    def __init__(self, codec: str = "vp8", *, fps: float = 30.0, keyframe_interval_s: float = 0.75):
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {tuple(CODECS)}, got {codec!r}")
        if not 0.5 <= keyframe_interval_s <= 1.0:
            raise ValueError(f"keyframe_interval_s must be in [0.5, 1.0], got {keyframe_interval_s}")
        self.codec_name = codec
        self.fps = fps
        self.gop = max(1, round(keyframe_interval_s * fps))
        self._ctx = None
        self._size = None
        self._bitrate = None
        self.frames = 0
        self.keyframes = 0
        # One converter for the encoder's life, single-threaded: PyAV's frame.reformat() defaults to a swscale
        # pool of one thread per core, started and joined for every frame of every room (measured: 2 threads
        # per live room, churned through glibc's stack cache), for a conversion under 1 ms.
        self._yuv = VideoReformatter()

    def _open(self, width: int, height: int, bitrate: int) -> None:
        if self.codec_name == "av1":
            os.environ.setdefault("SVT_LOG", "2")  # SVT-AV1 prints ~10 info lines per open; warnings and errors stay
        ctx = av.CodecContext.create(CODECS[self.codec_name], "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.bit_rate = bitrate
        ctx.gop_size = self.gop
        ctx.framerate = fractions.Fraction(round(self.fps), 1)
        ctx.time_base = fractions.Fraction(1, round(self.fps))
        if self.codec_name == "vp8":
            # aiortc's realtime libvpx settings: no lookahead, fastest speed, CBR.
            ctx.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0",
                           "minrate": str(bitrate), "maxrate": str(bitrate), "bufsize": str(bitrate)}
            ctx.qmin, ctx.qmax = 2, 56
        elif self.codec_name == "av1":
            # SVT-AV1's real-time mode: fastest preset, low-delay prediction (no lookahead, no reordering: a
            # packet for every frame at once), CBR (rc=2, the only rate control low delay allows), one thread.
            ctx.options = {"preset": "12", "svtav1-params": "rtc=1:rc=2:lp=1:lookahead=0"}
        else:
            ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
        ctx.thread_count = 1  # one core stays free for the model worker
        open_time_shared(ctx)
        self._ctx, self._size, self._bitrate = ctx, (width, height), bitrate
        self.frames = 0

    def encode(self, rgb: np.ndarray, pts: int, bitrate: int, force_keyframe: bool = False) -> av.Packet | None:
        """(H, W, 3) uint8 -> one packet holding the whole encoded frame, stamped with pts (90 kHz)."""
        h, w = rgb.shape[:2]
        if self._ctx is None or self._size != (w, h) or self._bitrate != bitrate:
            self._open(w, h, bitrate)  # a new size or rung starts with a keyframe
            force_keyframe = True
        frame = self._yuv.reformat(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"),
                                   format="yuv420p", threads=1)
        frame.pts = self.frames
        key = force_keyframe or self.frames % self.gop == 0
        if key:
            frame.pict_type = av.video.frame.PictureType.I
            self.keyframes += 1
        self.frames += 1
        data = b"".join(bytes(p) for p in self._ctx.encode(frame))
        if not data:
            return None
        packet = av.Packet(data)
        packet.pts, packet.time_base, packet.is_keyframe = pts, TIME_BASE, key
        return packet
