"""The model worker: one thread per model that wakes at each due time, batches every due session into
one WorldModel.step (micro-batching), and drops the frames into each session's latest-frame slot.

Sessions are phase-aligned to a global tick grid so that sessions at the same fps fall due together.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from worldlab.engine.session import Session
from worldlab.engine.slot import FrameMeta

log = logging.getLogger(__name__)
DUE_SLACK_S = 0.002  # sessions due within 2 ms of each other share a tick


class Scheduler:
    def __init__(self, model, *, micro_batching: bool = True, name: str = "worldlab-model"):
        self.model = model
        self.micro_batching = micro_batching
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ticks = 0
        self.batch_sizes: list[int] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            for s in self._sessions.values():
                s.close()
            self._sessions.clear()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def add(self, session: Session) -> None:
        period = 1.0 / session.fps_target
        session.next_due = math.ceil(time.monotonic() / period) * period
        with self._lock:
            self._sessions[session.id] = session
        self._wake.set()

    def remove(self, session: Session) -> None:
        self.detach(session)
        session.close()

    def detach(self, session: Session) -> None:
        """Stop stepping a session without closing it (it moves to another model's scheduler)."""
        with self._lock:
            self._sessions.pop(session.id, None)

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            sessions = self.sessions()
            if not sessions:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            now = time.monotonic()
            first = min(s.next_due for s in sessions)
            if first > now:
                self._wake.wait(min(first - now, 0.05))
                self._wake.clear()
                continue
            due = [s for s in sessions if s.next_due <= now + DUE_SLACK_S]
            try:
                self._tick(due)
            except Exception:  # never let one bad tick kill the worker of every session
                log.exception("scheduler tick failed")

    def _tick(self, due: list[Session]) -> None:
        tick_start = time.monotonic()
        inputs = []
        for s in due:
            keys, seq, queue_ms, prompt, had_input = s.take_inputs(tick_start)
            if prompt is not None:
                t0 = time.perf_counter()
                self.model.recache(s.state, prompt[0])
                s.prompt = prompt[0]
                s.metrics.add("model_ms", (time.perf_counter() - t0) * 1000)
            inputs.append((keys, seq, queue_ms, had_input))
        t0 = time.perf_counter()
        if self.micro_batching:
            frames = self.model.step([s.state for s in due], [i[0] for i in inputs])
            per = [(time.perf_counter() - t0) * 1000] * len(due)
        else:
            frames, per = [], []
            for s, (keys, *_rest) in zip(due, inputs):
                t1 = time.perf_counter()
                frames.append(self.model.step([s.state], [keys])[0])
                per.append((time.perf_counter() - t1) * 1000)
        done = time.monotonic()
        self.ticks += 1
        self.batch_sizes.append(len(due))
        del self.batch_sizes[:-1000]
        for s, frame, ms, (keys, seq, queue_ms, had_input) in zip(due, frames, per, inputs):
            s.frame_id += 1
            meta = FrameMeta(s.frame_id, seq, done, ms, queue_ms)
            s.slot.put(frame, meta)
            s.note_frame(frame, keys, meta)
            s.metrics.add("model_ms", ms)
            s.metrics.event("frames")
            if had_input:
                s.metrics.add("queue_ms", queue_ms)
                s.record_ack(seq, s.frame_id)
            period = 1.0 / s.fps_target
            s.next_due += period
            if s.next_due < done - period:  # fell more than a frame behind: skip ahead, don't burst
                s.metrics.event("late_ticks")
                s.next_due = math.ceil(done / period) * period
