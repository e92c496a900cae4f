"""Cost controls for served sessions: concurrent sessions per tenant, frames per room and tenant per window,
and anomaly alerts when one session's model time or the relay share jumps. Numbers in SessionConfig (0 turns
a cap off).

PeerHub asks `CostControls.admit` before it creates a room and `CostControls.check` once every
`caps_check_s` which rooms must end; sessions without a token all belong to the tenant ANONYMOUS.
"""

from __future__ import annotations

import collections
import logging
import math
import statistics
import time

from worldlab.transport.ice import relay_pct

log = logging.getLogger(__name__)
ANONYMOUS = "anonymous"  # the tenant of every session without a token: one shared budget, never exempt
LEDGER_BUCKETS = 120  # a window is kept in this many buckets: Retry-After is exact to window / 120


class CapExceeded(Exception):
    """A cap refused an offer or ends a session: HTTP status, error code, retry_after_s (None: no hint)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.code, self.retry_after_s = status, code, retry_after_s


def tenant_of(tenant: str | None) -> str:
    return ANONYMOUS if tenant is None else tenant


class FrameLedger:
    """Frames generated per key (a room id or a tenant) in the last `window_s` seconds, in time buckets."""

    def __init__(self, window_s: float):
        self.window = window_s
        self.width = window_s / LEDGER_BUCKETS
        self._buckets: dict[str, collections.deque] = {}  # key -> deque of [bucket index, frames]

    def _prune(self, key: str, now: float) -> collections.deque | None:
        q = self._buckets.get(key)
        oldest = math.floor((now - self.window) / self.width)
        while q and q[0][0] <= oldest:
            q.popleft()
        if q is not None and not q:
            del self._buckets[key]  # a key nobody charged within the window costs no memory
            return None
        return q

    def charge(self, key: str, frames: int, now: float) -> None:
        if frames <= 0:
            return
        q = self._prune(key, now)
        if q is None:
            q = self._buckets[key] = collections.deque()
        idx = math.floor(now / self.width)
        if q and q[-1][0] == idx:
            q[-1][1] += frames
        else:
            q.append([idx, frames])

    def used(self, key: str, now: float) -> int:
        q = self._prune(key, now)
        return sum(n for _i, n in q) if q else 0

    def retry_after(self, key: str, cap: int, now: float) -> float:
        """Seconds until `key` has used fewer than `cap` (>= 1) frames in the window (0 if it already has)."""
        used = self.used(key, now)
        for idx, n in self._buckets.get(key, ()) if used >= cap else ():
            used -= n
            if used < cap:
                return max(0.0, idx * self.width + self.window - now)  # when _prune drops this bucket
        return 0.0

    def keys(self) -> int:
        return len(self._buckets)


class AnomalyWatch:
    """Flags a session whose model-seconds per wall second exceed `share`, or `factor` times the fleet
    median (with at least `min_fleet` sessions). Edge-triggered: one alert per episode, re-armed below."""

    def __init__(self, share: float, factor: float, min_fleet: int = 3, relay_pct: float = 0.0):
        self.share, self.factor, self.min_fleet, self.relay_pct = share, factor, min_fleet, relay_pct
        # kind -> alerts (worldlab_anomalies_total)
        self.counts = collections.Counter({"model_seconds": 0, "relay_share": 0})
        self._active: set[str] = set()
        self._relay_high = False

    def check_relay(self, pct: float) -> bool:
        """pct: percent of connected peers relayed through TURN. True on a new episode above `relay_pct`."""
        high = self.relay_pct > 0 and pct > self.relay_pct
        new = high and not self._relay_high
        self._relay_high = high
        self.counts["relay_share"] += new
        return new

    def check(self, rates: dict[str, float]) -> list[tuple[str, float, str]]:
        """rates: session id -> model-seconds per second. Returns the new alerts (id, rate, why)."""
        median = statistics.median(rates.values()) if len(rates) >= self.min_fleet else None
        alerts = []
        for sid, rate in rates.items():
            why = None
            if self.share > 0 and rate > self.share:
                why = f"above the absolute threshold {self.share:g}"
            elif median is not None and self.factor > 0 and median > 0 and rate > self.factor * median:
                why = f"{rate / median:.1f}x the fleet median {median:.3f}"
            if why is None:
                self._active.discard(sid)
            elif sid not in self._active:
                self._active.add(sid)
                self.counts["model_seconds"] += 1
                alerts.append((sid, rate, why))
        self._active &= set(rates)  # ended sessions leave no state behind
        return alerts


def model_seconds_rate(session, now: float) -> float | None:
    """Model-seconds the session consumed per wall second over its metrics horizon (None while younger:
    a first, cold step would look like an anomaly). A micro-batched step counts in full for each session."""
    m = session.metrics
    if now - session.origin < m.horizon:
        return None
    return float(m.values("model_ms").sum()) / 1000.0 / m.horizon


class CostControls:
    """Admission by tenant, frame caps per room and tenant, model-time anomalies (see module docstring)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.ledger = FrameLedger(cfg.frame_cap_window_s)
        self.anomalies = AnomalyWatch(cfg.anomaly_model_share, cfg.anomaly_median_factor,
                                      relay_pct=cfg.anomaly_relay_pct)
        self.hits = collections.Counter()  # error code -> offers refused or sessions ended by a cap
        self._charged: dict[str, int] = {}  # session id -> frames already charged
        self._ending: set[str] = set()  # sessions already told to end (their room closes after a grace)

    def admit(self, room: str | None, tenant: str | None, live_tenants: list[str | None]) -> None:
        """Raise CapExceeded if a new session for `room` (None: a server-chosen id) of `tenant` is over a cap;
        live_tenants: the tenant of every live (or starting) room."""
        t, cfg, now = tenant_of(tenant), self.cfg, time.monotonic()
        most = cfg.max_sessions_per_tenant
        if most and sum(tenant_of(x) == t for x in live_tenants) >= most:
            self._refuse(CapExceeded(503, "tenant_full", f"tenant {t!r} has its maximum of "
                                                         f"{most} live sessions; try again later"))
        for key, cap, what in ((f"tenant:{t}", cfg.tenant_frame_cap, f"tenant {t!r}"),
                               (f"room:{room}", cfg.room_frame_cap if room is not None else 0, f"room {room!r}")):
            if cap and self.ledger.used(key, now) >= cap:
                self._refuse(self._frame_cap(key, cap, what, now))

    def check(self, rooms) -> list[tuple[object, CapExceeded]]:
        """Charge each room's new frames; the rooms that must end now, each with its reason."""
        now, cfg = time.monotonic(), self.cfg
        for r in rooms:
            self._charge(r, now)
        live = {r.session.id for r in rooms}
        self._charged = {sid: n for sid, n in self._charged.items() if sid in live}
        self._ending &= live
        ending = []
        for r in rooms:
            if r.session.id in self._ending:
                continue
            t = tenant_of(r.tenant)
            for key, cap, what in ((f"room:{r.id}", cfg.room_frame_cap, f"room {r.id!r}"),
                                   (f"tenant:{t}", cfg.tenant_frame_cap, f"tenant {t!r}")):
                if cap and self.ledger.used(key, now) >= cap:
                    exc = self._frame_cap(key, cap, what, now)
                    self.hits[exc.code] += 1
                    self._ending.add(r.session.id)
                    ending.append((r, exc))
                    break
        self._watch(rooms, now)
        return ending

    def settle(self, room) -> None:
        """Charge a closing room's last frames and forget it: sessions shorter than caps_check_s count too."""
        self._charge(room, time.monotonic())
        self._charged.pop(room.session.id, None)
        self._ending.discard(room.session.id)

    def _charge(self, r, now: float) -> None:
        made = r.session.frame_id + 1
        new = made - self._charged.get(r.session.id, 0)
        self._charged[r.session.id] = made
        if self.cfg.room_frame_cap:  # no cap, no ledger: a churned server keeps no key per room it saw
            self.ledger.charge(f"room:{r.id}", new, now)
        if self.cfg.tenant_frame_cap:
            self.ledger.charge(f"tenant:{tenant_of(r.tenant)}", new, now)

    def _watch(self, rooms, now: float) -> None:
        rates = {}
        for r in rooms:
            rate = model_seconds_rate(r.session, now)
            if rate is not None:
                rates[r.session.id] = rate
        by_id = {r.session.id: r for r in rooms}
        for sid, rate, why in self.anomalies.check(rates):
            r = by_id[sid]
            log.warning("anomaly: session %s (room %s, tenant %s) uses %.3f model-seconds per second, %s",
                        sid, r.id, tenant_of(r.tenant), rate, why)
        pcs = [pc for r in rooms for pc in r.pcs]
        share = relay_pct(pcs)
        if self.anomalies.check_relay(share):
            log.warning("anomaly: %.0f %% of connected peers go through a TURN relay (%d peers), above %g %%",
                        share, len(pcs), self.anomalies.relay_pct)

    def _frame_cap(self, key: str, cap: int, what: str, now: float) -> CapExceeded:
        wait = self.ledger.retry_after(key, cap, now)
        return CapExceeded(429, "frame_cap", f"{what} has used its {cap} frames per "
                                                f"{self.cfg.frame_cap_window_s:g} s; try again in {math.ceil(wait)} s",
                           retry_after_s=wait)

    def _refuse(self, exc: CapExceeded) -> None:
        self.hits[exc.code] += 1
        raise exc
