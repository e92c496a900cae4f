"""Load shedding: a server past what it can serve refuses new players (503 server_busy) instead of slowing
every live session down; `max_sessions` is the static cap, this is the measured one (docs/streaming.md).

Two signals, each off at 0 (SessionConfig.shed_below_fps, shed_model_load): a live session that has streamed
for a while gets fewer new frames than asked for, or the model worker's time would run out with one more.
"""

from __future__ import annotations

import time

from worldlab.config import SessionConfig
from worldlab.engine.scheduler import LOAD_WINDOW_S

# A session's fps is read over LOAD_WINDOW_S: one younger than this (+1 s for its first frames) has no full
# window yet, and a room that is not stepped yet but was made this recently is counted as about to be.
SETTLED_S = LOAD_WINDOW_S + 1.0
RETRY_AFTER_S = 2.0


def busy_reason(cfg: SessionConfig, scheduler, rooms, starting: int = 0, now: float | None = None) -> str | None:
    """Why a new player must wait (one line), or None. `rooms`: the live rooms (each with .session and
    .scheduler); `starting`: slots reserved for rooms being made; `scheduler`: the one a new room would use."""
    if not (cfg.shed_below_fps or cfg.shed_model_load):
        return None  # the default: every offer passes here, so nothing is asked of the rooms
    now = time.monotonic() if now is None else now
    stepped, waiting = [], []  # one stepping() call (a lock) per room
    for r in rooms:
        (stepped if r.scheduler is not None and r.scheduler.stepping(r.session) else waiting).append(r)
    if cfg.shed_below_fps > 0:
        for r in stepped:
            s = r.session
            if now - s.stepping_since >= SETTLED_S:  # a full window of steps (since it started or woke)
                fps = s.metrics.rate("sent", LOAD_WINDOW_S)
                if fps < cfg.shed_below_fps * s.fps_target:
                    return f"a live session gets {fps:.1f} of its {s.fps_target:g} fps"
    if cfg.shed_model_load > 0 and scheduler is not None:
        mine = sum(r.scheduler is scheduler for r in stepped)
        if mine:
            fresh = sum(r.scheduler is scheduler and now - r.session.origin < SETTLED_S
                        for r in waiting)  # offers about to connect
            # Linear in sessions: a batched step grows slower than that, so this errs on the side of refusing.
            projected = scheduler.load() * (mine + fresh + starting + 1) / mine
            if projected > cfg.shed_model_load:
                return f"the model would be busy {100 * projected:.0f} % of the time with one more session"
    return None
