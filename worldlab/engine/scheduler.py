"""The model worker: one thread per model that wakes at each due time, batches every due session into
one WorldModel.step (micro-batching), and drops the frames into each session's latest-frame slot.

Sessions are phase-aligned to a global tick grid so that sessions at the same fps fall due together.
A fault ends only its own session (see `_step_group`; docs/streaming.md, Faults).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from worldlab.config import SessionConfig
from worldlab.engine.session import Session
from worldlab.engine.slot import FrameMeta

log = logging.getLogger(__name__)
DUE_SLACK_S = 0.002  # sessions due within 2 ms of each other share a tick


class StepTimeout(Exception):
    """A model call overran the watchdog and was abandoned on its runner thread."""


class _Runner:
    """One daemon thread running model calls in order. Daemon: a call that never returns is abandoned
    for good and must not hold up the process's exit."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        self._jobs.put(None)  # the thread ends after the call it is in, if any

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the scheduler thread, which decides
                future.set_exception(exc)


class Scheduler:
    def __init__(self, model, *, micro_batching: bool = True, name: str = "worldlab-model",
                 step_timeout_s: float = SessionConfig.step_timeout_s):
        self.model = model
        self.micro_batching = micro_batching
        self.step_timeout_s = step_timeout_s
        self._runner: _Runner | None = None  # started with the worker
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ticks = 0
        self.batch_sizes: list[int] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        self._runner = _Runner(f"{self._thread.name}-step")
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._runner is not None:
            self._runner.stop()
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

    # -- faults --------------------------------------------------------------------------------
    def _call(self, fn, *args):
        """fn(*args) on the runner thread; StepTimeout after step_timeout_s. A thread cannot be killed, so an
        overrunning call is left to finish on the old runner (its result is dropped) and a new runner takes
        over: the sessions not in that call keep their frame rate."""
        future = self._runner.submit(fn, *args)
        try:
            return future.result(timeout=self.step_timeout_s)
        except FutureTimeout:
            self._runner.stop()
            self._runner = _Runner(f"{self._thread.name}-step")
            raise StepTimeout(f"{getattr(fn, '__name__', 'model call')} took over {self.step_timeout_s:g} s") from None

    def _fail(self, session: Session, exc: Exception) -> None:
        stalled = isinstance(exc, StepTimeout)
        log.warning("session %s ended: the model %s (%s)", session.id, "stalled" if stalled else "failed", exc,
                    exc_info=not stalled)
        self.detach(session)
        if stalled:
            session.fail("model_stalled", "the model stopped responding for this session; it has ended")
        else:
            session.fail("model_failed", "the model failed on this session; it has ended")

    def _rebuild(self, sessions: list[Session]) -> None:
        """A new state for each, prefilled from its recent frames (the hot-switch path)."""
        for s in sessions:
            try:
                s.state = self._call(s.rebuild_state, self.model)
                s.suspect = True
            except Exception as exc:
                self._fail(s, exc)

    def _step(self, due: list[Session], keys: list) -> tuple[list, list[float]]:
        """One frame per due session (None where it failed) and the model time of each.
        Micro-batching groups every session but the suspects (rebuilt after a stalled batch): they are
        stepped alone, so a repeat stall ends the culprit only."""
        if self.micro_batching:
            groups = [[i for i, s in enumerate(due) if not s.suspect]] + [[i] for i, s in enumerate(due) if s.suspect]
        else:
            groups = [[i] for i in range(len(due))]
        frames, per = [None] * len(due), [0.0] * len(due)
        for group in filter(None, groups):
            for i, frame, ms in zip(group, *self._step_group([due[i] for i in group], [keys[i] for i in group])):
                frames[i], per[i] = frame, ms
        return frames, per

    def _step_group(self, group: list[Session], keys: list) -> tuple[list, list[float]]:
        """A step that raises ends its session with `model_failed`, one that overruns the watchdog with
        `model_stalled`. In a batch neither can be pinned on one session, so the batch is retried one
        session at a time, after a stall on states rebuilt from recent frames (the old ones are in use)."""
        t0 = time.perf_counter()
        try:
            frames = self._call(self.model.step, [s.state for s in group], keys)
            return list(frames), [(time.perf_counter() - t0) * 1000] * len(group)
        except StepTimeout as exc:
            if len(group) == 1:
                self._fail(group[0], exc)
                return [None], [0.0]
            log.warning("a batch of %d sessions stalled (%s): rebuilding them", len(group), exc)
            self._rebuild(group)
        except Exception as exc:
            if len(group) == 1:
                self._fail(group[0], exc)
                return [None], [0.0]
            log.warning("a batch of %d sessions failed (%s): stepping them one by one", len(group), exc)
        alone = [self._step_group([s], [k]) if s.fault is None else ([None], [0.0]) for s, k in zip(group, keys)]
        return [f[0] for f, _ in alone], [ms[0] for _, ms in alone]

    def _recache(self, s: Session, prompt: str) -> bool:
        t0 = time.perf_counter()
        try:
            self._call(self.model.recache, s.state, prompt)
        except Exception as exc:
            self._fail(s, exc)
            return False
        s.prompt = prompt
        s.metrics.add("model_ms", (time.perf_counter() - t0) * 1000)
        return True

    # -- one tick ------------------------------------------------------------------------------
    def _tick(self, due: list[Session]) -> None:
        tick_start = time.monotonic()
        inputs = []
        for s in due:
            keys, seq, queue_ms, prompt, had_input = s.take_inputs(tick_start)
            if prompt is None or self._recache(s, prompt[0]):
                inputs.append((s, keys, seq, queue_ms, had_input))
        due = [i[0] for i in inputs]
        frames, per = self._step(due, [i[1] for i in inputs])
        done = time.monotonic()
        self.ticks += 1
        self.batch_sizes.append(len(due))
        del self.batch_sizes[:-1000]
        for frame, ms, (s, keys, seq, queue_ms, had_input) in zip(frames, per, inputs):
            if frame is not None:  # None: the session failed
                self._deliver(s, frame, keys, FrameMeta(s.frame_id + 1, seq, done, ms, queue_ms), had_input)
            period = 1.0 / s.fps_target
            s.next_due += period
            if s.next_due < done - period:  # fell more than a frame behind: skip ahead, don't burst
                s.metrics.event("late_ticks")
                s.next_due = math.ceil(done / period) * period

    @staticmethod
    def _deliver(s: Session, frame, keys, meta: FrameMeta, had_input: bool) -> None:
        s.frame_id = meta.frame_id
        s.slot.put(frame, meta)
        s.note_frame(frame, keys, meta)
        s.metrics.add("model_ms", meta.model_ms)
        s.metrics.event("frames")
        if had_input:
            s.metrics.add("queue_ms", meta.queue_ms)
            s.record_ack(meta.seq, meta.frame_id)
