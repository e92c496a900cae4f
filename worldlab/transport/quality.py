"""Adaptive quality: the ladder of (frame height, bitrate) rungs and the controller that moves a room along it.

The controller is pure logic fed one Reading per stats interval (the time can be passed in), so it is
unit-tested with made-up figures; PeerHub gathers them (`reading`, `network_figures`) and applies the rung.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from worldlab.config import SessionConfig
from worldlab.engine.metrics import percentile
from worldlab.transport.protocol import QUALITY

log = logging.getLogger(__name__)
PRESETS = ("lean", "full")  # the two bitrate presets of every height, cheapest first


@dataclass(frozen=True)
class Rung:
    name: str  # "256p" (full bitrate) or "256p-lean"
    height: int  # px of the frame sent (the width follows the model's aspect ratio)
    bitrate: int  # bit/s the encoder aims at
    level: int  # index of the height in the ladder, 0 = smallest
    preset: int  # index in PRESETS


class Ladder:
    """SessionConfig.quality_ladder as rungs, lowest first; `ladder[name]` takes a rung name or a mode
    ("low" = the bottom rung, "high" = the top)."""

    def __init__(self, table=SessionConfig.quality_ladder):
        if not table:
            raise ValueError("quality_ladder needs at least one (height, lean bit/s, full bit/s) row")
        heights = [int(row[0]) for row in table]
        if heights != sorted(set(heights)) or any(len(row) != 1 + len(PRESETS) for row in table):
            raise ValueError(f"quality_ladder rows are (height, lean bit/s, full bit/s) with heights rising "
                             f"strictly, got {table}")
        self.rungs = []
        for level, (height, *rates) in enumerate(table):
            for preset, rate in enumerate(rates):
                name = f"{height}p" if preset == len(PRESETS) - 1 else f"{height}p-{PRESETS[preset]}"
                self.rungs.append(Rung(name, int(height), int(rate), level, preset))
        self._by_name = {r.name: r for r in self.rungs}
        self.bottom, self.top = self.rungs[0], self.rungs[-1]

    def __getitem__(self, name: str) -> Rung:
        if name == "low":
            return self.bottom
        if name == "high":
            return self.top
        if name not in self._by_name:
            raise ValueError(f"rung must be one of {tuple(self._by_name)} or low/high, got {name!r}")
        return self._by_name[name]

    def at(self, level: int, preset: int) -> Rung:
        return self.rungs[level * len(PRESETS) + preset]

    @property
    def levels(self) -> int:
        return len(self.rungs) // len(PRESETS)


LADDER = Ladder()  # the default ladder (benchmarks, measurements); a hub builds its own from its config


def upscale(frames: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour upscale (crisp pixels) of (..., H, W, 3) frames to `height` rows (width in proportion)."""
    h, w = frames.shape[-3:-1]
    if height % h == 0:
        k = height // h
        return frames.repeat(k, -3).repeat(k, -2)
    width = round(w * height / h)
    rows, cols = np.arange(height) * h // height, np.arange(width) * w // width
    return frames.take(rows, -3).take(cols, -2)


@dataclass(frozen=True)
class Reading:
    """One stats interval of a room. None: no figure (no page report, no RTCP yet)."""

    fps_actual: float
    fps_target: float
    encode_ms_p95: float | None = None  # the last interval's encodes
    late_per_s: float = 0.0  # scheduler late ticks (the model missed its slot) per second
    decode_ms: float | None = None  # the page's decode time per frame (its decode headroom = period - this)
    rtt_ms: float | None = None
    loss_pct: float | None = None


def reading(stats: dict, session, frontend: dict | None, network: tuple, interval_s: float) -> Reading:
    """A Reading from Room.stats, the session's metrics, Room.page_report and network_figures."""
    recent = session.metrics.values("encode_ms")[-max(1, round(session.fps_target * interval_s)):]
    rtts = [v for v in (network[0], (frontend or {}).get("rtt_ms")) if v is not None]
    return Reading(stats["fps_actual"], stats["fps_target"], percentile(recent, 95),
                   session.metrics.rate("late_ticks"), (frontend or {}).get("decode_ms"),
                   max(rtts) if rtts else None, network[1])


async def adapt(room, stats: dict, interval_s: float) -> None:
    """auto quality: the room's QualityController reads this interval's figures and may move its track's rung.
    Network figures come from the players' peers only: a spectator cannot lower the player's stream."""
    if room.adapt.mode != "auto":
        return
    sctps = {getattr(ch, "transport", None) for ch in room.player_channels}
    network = await network_figures([pc for pc in room.pcs if pc.sctp is not None and pc.sctp in sctps])
    rung = room.adapt.update(reading(stats, room.session, room.page_report(), network, interval_s))
    if rung is not None:
        log.info("room %s: quality rung %s -> %s", room.id, room.track.rung, rung.name)
        room.track.set_rung(rung.name)


async def network_figures(pcs) -> tuple[float | None, float | None]:
    """(rtt ms, loss %) the worst of the peers' RTCP receiver reports say; None where none came yet."""
    rtt, loss = None, None
    for pc in pcs:
        for sender in pc.getSenders():
            try:
                report = await sender.getStats()
            except Exception:  # a sender being torn down
                continue
            for st in report.values():
                if st.type != "remote-inbound-rtp":
                    continue
                if st.roundTripTime is not None:
                    rtt = max(rtt or 0.0, st.roundTripTime * 1000)
                loss = max(loss or 0.0, 100.0 * st.fractionLost / 256)  # RTCP: lost fraction in 1/256ths
    return rtt, loss


class QualityController:
    """One room's rung. auto: down one notch after `quality_bad_reads` unhealthy readings in a row (the height
    for compute trouble, the bitrate preset first for network trouble), up one notch after
    `quality_up_after_s` healthy if the next rung's predicted encode / decode time still fits."""

    def __init__(self, cfg: SessionConfig = SessionConfig(), mode: str = "auto", now: float | None = None,
                 ladder: Ladder | None = None):
        self.cfg = cfg
        self.ladder = ladder or Ladder(cfg.quality_ladder)
        self.rung = self.ladder[cfg.quality_start]
        self.mode = "auto"
        self.bad_reads = 0
        now = time.monotonic() if now is None else now
        self.born = self.changed = self.healthy_since = now
        self.set_mode(mode, now)

    def set_mode(self, mode: str, now: float | None = None) -> Rung:
        """auto, or pin the bottom (low) / top (high) rung; the rung to use now."""
        if mode not in QUALITY:
            raise ValueError(f"quality must be one of {QUALITY}, got {mode!r}")
        self.mode = mode
        if mode != "auto":
            self.rung = self.ladder[mode]
        self.bad_reads = 0
        self.healthy_since = time.monotonic() if now is None else now
        return self.rung

    def update(self, r: Reading, now: float | None = None) -> Rung | None:
        """Feed one reading; the new rung if it changed, else None."""
        now = time.monotonic() if now is None else now
        cfg = self.cfg
        if self.mode != "auto" or now - self.born < cfg.quality_warmup_s:
            return None
        compute, network = self._trouble(r)
        if compute or network:
            self.healthy_since = now
            # Just after a change the fps window still holds the old rung: those readings do not count.
            self.bad_reads = self.bad_reads + 1 if now - self.changed >= cfg.quality_settle_s else 0
            if self.bad_reads >= cfg.quality_bad_reads:
                return self._move(self._down(compute, network), now)
            return None
        self.bad_reads = 0
        if not self._calm(r):
            self.healthy_since = now
        elif now - self.healthy_since >= cfg.quality_up_after_s:
            return self._move(self._up(r), now)
        return None

    # -- the figures -----------------------------------------------------------------------------------
    def _trouble(self, r: Reading) -> tuple[bool, bool]:
        """(compute, network): is either over its limit?"""
        cfg, busy = self.cfg, self.cfg.quality_busy * 1000 / r.fps_target
        compute = (r.fps_actual < cfg.quality_fps_low * r.fps_target or r.late_per_s >= cfg.quality_late_per_s
                   or _over(r.encode_ms_p95, busy) or _over(r.decode_ms, busy))
        network = _over(r.rtt_ms, cfg.quality_rtt_ms) or _over(r.loss_pct, cfg.quality_loss_pct)
        return compute, network

    def _calm(self, r: Reading) -> bool:
        """Healthy enough to count towards stepping up: every figure well inside its limit (the hysteresis)."""
        cfg, calm = self.cfg, self.cfg.quality_calm
        busy = cfg.quality_busy * 1000 / r.fps_target
        return (r.fps_actual >= cfg.quality_fps_high * r.fps_target and r.late_per_s == 0
                and not _over(r.encode_ms_p95, calm * busy) and not _over(r.decode_ms, calm * busy)
                and not _over(r.rtt_ms, calm * cfg.quality_rtt_ms)
                and not _over(r.loss_pct, calm * cfg.quality_loss_pct))

    # -- moves -----------------------------------------------------------------------------------------
    def _down(self, compute: bool, network: bool) -> Rung:
        level, preset = self.rung.level, self.rung.preset
        if network:
            if preset > 0:
                preset -= 1
            elif not compute:
                level = max(0, level - 1)
        if compute:
            if level > 0:
                level -= 1
            else:  # the smallest height: a lower bitrate is all that is left
                preset = max(0, preset - 1)
        return self.ladder.at(level, preset)

    def _up(self, r: Reading) -> Rung:
        """The next height if its predicted cost fits (encode and decode scale with the pixels), else the
        next bitrate preset at this height."""
        level, preset = self.rung.level, self.rung.preset
        if level + 1 < self.ladder.levels:
            bigger = self.ladder.at(level + 1, preset)
            growth = (bigger.height / self.rung.height) ** 2
            busy = self.cfg.quality_busy * 1000 / r.fps_target
            if not _over(r.encode_ms_p95, busy / growth) and not _over(r.decode_ms, busy / growth):
                return bigger
        return self.ladder.at(level, min(preset + 1, len(PRESETS) - 1))

    def _move(self, rung: Rung, now: float) -> Rung | None:
        self.bad_reads = 0
        self.healthy_since = now
        if rung == self.rung:
            return None
        self.rung, self.changed = rung, now
        return rung


def _over(value: float | None, limit: float) -> bool:
    return value is not None and value > limit
