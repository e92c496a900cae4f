"""Sound from the world the stream shows: a click when a sprite visibly bounces, a tone pitched by the agent's x,
read from the model's own frames by the session worker and rendered as 48 kHz samples on the session's clock.
"""
from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass

import numpy as np

from worldlab import env

SAMPLE_RATE = 48_000  # Opus's clock
FRAME_SAMPLES = 960  # one audio frame = 20 ms, as Opus sends it (worldlab.transport.opus)
TONE_HZ = (220.0, 880.0)  # pitch with the agent at the left / right edge: two octaves across the frame
TONE_AMP = 0.08  # quiet under the clicks, so a click is found by its amplitude alone
CLICK_AMP = 0.9
CLICK_HZ = 2000.0
CLICK_SAMPLES = 288  # 6 ms burst, full amplitude on its first sample, decaying
CLICK_DECAY_SAMPLES = 72.0  # e-folding length of the burst
CLICK_GAP_S = 0.45  # bounces closer than this share one click: the page pairs a click with a frame within 200 ms
THEME_SHARE = 0.3  # the frame is the procedural world only if one theme's background covers this share
NOTES_KEPT = 256  # per-frame notes remembered (8 s at 30 fps): frames the track never sent are forgotten
MAX_LEAD_S = 0.5  # SessionConfig.audio_lead_ms is at most this: further ahead, a prediction is a guess


@dataclass(frozen=True)
class Sighting:
    """What one frame shows: the agent's x (0 = left edge, 1 = right), each object's top-left corner where it is
    fully visible (None: hidden, partly occluded, or no object)."""
    agent_x: float | None
    objects: tuple


SILENT = Sighting(None, (None, None))


def _packed(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int32 0xRRGGBB: one compare per pixel finds a colour."""
    f = frame.astype(np.int32)
    return (f[..., 0] << 16) | (f[..., 1] << 8) | f[..., 2]


def _mask(packed: np.ndarray, color) -> np.ndarray:
    r, g, b = color
    return packed == (r << 16) | (g << 8) | b


def read_frame(frame: np.ndarray) -> Sighting:
    """The sprites of a procedural-world frame (H = W = env.SIZE, uint8 RGB, exact palette colours as the env
    and the sprite compositor paint them); SILENT for any other picture."""
    if not isinstance(frame, np.ndarray) or frame.shape != (env.SIZE, env.SIZE, 3):
        return SILENT
    frame = _packed(frame)
    sparse = frame[::4, ::4]  # the theme from every 16th pixel: the background is large
    share = {t.name: float((_mask(sparse, t.background[0]) | _mask(sparse, t.background[1])).mean())
             for t in env.THEME_LIST}
    name = max(share, key=share.get)
    if share[name] < THEME_SHARE:
        return SILENT
    theme = next(t for t in env.THEME_LIST if t.name == name)
    agent = _mask(frame, theme.agent)
    agent_x = float(np.nonzero(agent.any(0))[0].mean()) / (env.SIZE - 1) if agent.any() else None
    return Sighting(agent_x, tuple(_whole(_mask(frame, c), env.OBJECT) for c in theme.objects))


def _whole(mask: np.ndarray, side: int):
    """(x, y) top-left of a sprite whose visible pixels are a full side x side square, else None."""
    cols, rows = np.nonzero(mask.any(0))[0], np.nonzero(mask.any(1))[0]
    if len(cols) != side or len(rows) != side or cols[-1] - cols[0] != side - 1 or rows[-1] - rows[0] != side - 1:
        return None
    return int(cols[0]), int(rows[0])


def pitch_hz(agent_x: float | None) -> float | None:
    lo, hi = TONE_HZ
    return None if agent_x is None else lo * (hi / lo) ** agent_x


class BounceDetector:
    """A bounce = an object's velocity on one axis flips sign between frames where it is fully visible in
    consecutive frames (a zero step, the frame at the wall, keeps the sign). A gap forgets the sign, so a
    bounce the stream never showed (behind the pillar) makes no click when the object re-appears."""

    def __init__(self):
        self._prev: list = [None, None]  # per object: (frame_id, (x, y)) of its last full sighting
        self._sign: list = [[0, 0], [0, 0]]  # per object, per axis: sign of the last non-zero step
        self._vel: list = [None, None]  # per object: its last step (dx, dy) between consecutive full sightings

    def update(self, frame_id: int, sighting: Sighting) -> bool:
        bounced = False
        for i, pos in enumerate(sighting.objects):
            prev = self._prev[i]
            self._vel[i] = None
            if pos is None or prev is None or prev[0] != frame_id - 1:
                self._sign[i] = [0, 0]
            else:
                self._vel[i] = (pos[0] - prev[1][0], pos[1] - prev[1][1])
                for axis in range(2):
                    step = int(np.sign(pos[axis] - prev[1][axis]))
                    if step and self._sign[i][axis] and step != self._sign[i][axis]:
                        bounced = True
                    if step:
                        self._sign[i][axis] = step
            self._prev[i] = None if pos is None else (frame_id, pos)
        return bounced

    def predict(self, horizon: int) -> list[int]:
        """For each object whose velocity is known: in how many frames (1..horizon) the first frame showing its
        next bounce comes, by the procedural world's motion (constant velocity, folded at the walls) run on
        from the positions the stream shows. Bounces that would happen behind the pillar are left out."""
        out = []
        for i in range(2):
            if self._prev[i] is not None and self._vel[i] is not None:
                k = _frames_to_bounce(self._prev[i][1], self._vel[i], list(self._sign[i]), horizon)
                if k is not None:
                    out.append(k)
        return out


def _fold(x: int, v: int) -> tuple[int, int]:
    hi = env.SIZE - env.OBJECT
    return (-x, -v) if x < 0 else (2 * hi - x, -v) if x > hi else (x, v)


def _visible(x: int) -> bool:
    return x + env.OBJECT <= env.OCCLUDER_X[0] or x >= env.OCCLUDER_X[1]


def _frames_to_bounce(pos, vel, sign: list, horizon: int) -> int | None:
    """The BounceDetector rule run forward: the first step whose sign flips, seen in two visible frames."""
    p, v = list(pos), list(vel)  # an axis with a zero step (the frame at a wall) stays put: unknown speed
    for k in range(1, horizon + 1):
        before = list(p)
        flipped = False
        for a in range(2):
            p[a], v[a] = _fold(p[a] + v[a], v[a])
            step = int(np.sign(p[a] - before[a]))
            flipped |= bool(step and sign[a] and step != sign[a])
            sign[a] = step or sign[a]
        if flipped:
            return k if _visible(before[0]) and _visible(p[0]) else None
    return None


class SoundScore:
    """One session's sound. `observe` (the model worker, every frame it makes) reads the frame; `shown` (the
    video track, as it sends a frame) places that frame's click and pitch at its send time; `render` (the audio
    track) makes the samples. Times are time.monotonic() seconds; samples count from the session's `origin`.

    Only frames are read (any WorldModel makes them): a picture that is not the procedural world's (another size,
    no theme's background) is silent. Deterministic: the samples depend only on the frames and the times the
    video track sent them, both on the session's origin, so a click starts on the sample whose time is the pts
    of the video frame that shows the bounce."""

    def __init__(self, origin: float, *, fps: float = 30.0, lead_s: float = 0.0):
        self.origin, self.fps = origin, fps
        self._lock = threading.Lock()
        self.set_lead(lead_s)
        self._planned: dict[int, float | None] = {}  # foreseen bounce frame id -> the lead its click used (None: none)
        self._click_times: collections.deque = collections.deque(maxlen=8)
        self.unconfirmed = 0  # clicks placed for foreseen bounces the stream then did not show
        self.late = 0  # clicks for bounces nobody foresaw: placed when their frame is sent, heard late
        self._bounces = BounceDetector()
        self._notes: collections.OrderedDict = collections.OrderedDict()  # frame_id -> (click, hz)
        self._last_shown = -1
        self._clicks: list[int] = []  # start samples of clicks not yet fully rendered
        self._pitches: list[tuple[int, float | None]] = []  # (from sample, hz) changes not yet rendered
        self._hz: float | None = None  # pitch in effect at `_rendered`
        self._phase = 0.0
        self._rendered = 0  # first sample not rendered yet
        self.clicks = 0  # clicks placed so far
        self._clicked: collections.deque = collections.deque(maxlen=16)  # (frame id, lead s) of the latest clicks

    def observe(self, frame_id: int, frame: np.ndarray) -> None:
        sighting = read_frame(frame)
        with self._lock:
            bounced = self._bounces.update(frame_id, sighting)
            self._notes[frame_id] = (bounced, pitch_hz(sighting.agent_x), self._bounces.predict(self._horizon))
            while len(self._notes) > NOTES_KEPT:
                self._notes.popitem(last=False)

    def shown(self, frame_id: int, t: float) -> bool:
        """The video track sends `frame_id` at time t: its pitch starts at t, and a click if it (or a frame
        after the last one sent, which the slot dropped) shows a bounce. True when a click was placed."""
        with self._lock:
            since = [f for f in self._notes if self._last_shown < f <= frame_id]
            self._last_shown = max(self._last_shown, frame_id)
            if frame_id not in self._notes:
                return False
            _bounced, hz, ahead = self._notes[frame_id]
            self._pitches.append((max(self._rendered, self.sample_at(t)), hz))  # an instant already sent: at once
            for k in ahead:
                self._plan(frame_id + k, t + max(0.0, k / self.fps - self.lead_s))
            lead = None
            if any(self._notes[f][0] for f in since):
                foreseen = [self._planned.pop(f) for f in since if f in self._planned]
                placed = [v for v in foreseen if v is not None]
                lead = placed[0] if placed else None if foreseen else 0.0 if self._click(t) else None
                self.late += bool(lead is not None and not foreseen)  # unforeseen: now, late by the audio path
                if lead is not None:
                    self._clicked.append((frame_id, lead))
            self._forget(frame_id)
            return lead is not None

    def set_lead(self, lead_s: float) -> None:
        """How long before a foreseen bounce's frame its click is placed (the receiver's audio path minus its
        video path); 0 = exactly at the frame's pts."""
        if isinstance(lead_s, bool) or not isinstance(lead_s, (int, float)) or not 0 <= lead_s <= MAX_LEAD_S:
            raise ValueError(f"the audio lead must be in [0, {MAX_LEAD_S * 1000:g}] ms, got {lead_s!r} s")
        with self._lock:
            self.lead_s = float(lead_s)
            self._horizon = math.ceil(lead_s * self.fps) + 1 if lead_s > 0 else 0  # frames a bounce is foreseen

    def _plan(self, frame_id: int, when: float) -> None:
        if frame_id > self._last_shown and frame_id not in self._planned:
            self._planned[frame_id] = self.lead_s if self._click(when) else None

    def _click(self, when: float) -> bool:
        """A click at time `when` unless another is within CLICK_GAP_S of it."""
        if any(abs(when - c) < CLICK_GAP_S for c in self._click_times):
            return False
        self._click_times.append(when)
        self._clicks.append(max(self._rendered, self.sample_at(when)))
        self.clicks += 1
        return True

    def _forget(self, frame_id: int) -> None:
        for f in [f for f in self._planned if f < frame_id]:  # foreseen, then not shown: a click without a bounce
            self.unconfirmed += self._planned.pop(f) is not None
        if len(self._pitches) > NOTES_KEPT:  # nobody renders (no audio peer): keep memory bounded
            self._hz = self._pitches.pop(0)[1]
            del self._clicks[:-NOTES_KEPT]

    def counts(self) -> dict:
        """Clicks placed, how many came late (unforeseen) and how many foreseen bounces never showed."""
        return {"audio_clicks": self.clicks, "audio_late": self.late, "audio_unconfirmed": self.unconfirmed}

    def click_lead_ms(self, frame_id: int) -> float | None:
        """If the frame sent as `frame_id` shows a bounce that clicked: how long before its pts (ms; the page pairs
        the click it hears with this frame and learns its audio path from both). None: no click."""
        with self._lock:
            return next((lead * 1000 for f, lead in self._clicked if f == frame_id), None)

    def sample_at(self, t: float) -> int:
        return int(round((t - self.origin) * SAMPLE_RATE))

    def render(self, start: int, n: int) -> np.ndarray:
        """Samples [start, start + n) as int16 (n,); calls must follow each other (start = previous end)."""
        if start != self._rendered and self._rendered:
            raise ValueError(f"render must continue at sample {self._rendered}, got {start}")
        out = np.zeros(n, np.float64)
        with self._lock:
            self._rendered = start
            changes = sorted(p for p in self._pitches if p[0] < start + n)
            self._pitches = [p for p in self._pitches if p[0] >= start + n]
            clicks = [c for c in self._clicks if c < start + n]
            self._clicks = [c for c in self._clicks if c + CLICK_SAMPLES > start + n]
            self._rendered = start + n
        bounds = [start] + [max(start, s) for s, _hz in changes] + [start + n]
        pitches = [self._hz] + [hz for _s, hz in changes]
        for a, b, hz in zip(bounds[:-1], bounds[1:], pitches):
            if b > a and hz is not None:
                steps = self._phase + 2 * np.pi * hz / SAMPLE_RATE * np.arange(b - a)
                out[a - start:b - start] = TONE_AMP * np.sin(steps)
                self._phase = float((self._phase + 2 * np.pi * hz / SAMPLE_RATE * (b - a)) % (2 * np.pi))
        self._hz = pitches[-1]
        for c in clicks:
            k = np.arange(max(c, start), min(c + CLICK_SAMPLES, start + n)) - c  # sample index within the click
            burst = CLICK_AMP * np.cos(2 * np.pi * CLICK_HZ / SAMPLE_RATE * k) * np.exp(-k / CLICK_DECAY_SAMPLES)
            out[c + k - start] += burst
        return np.round(np.clip(out, -1.0, 1.0) * 32767).astype(np.int16)
