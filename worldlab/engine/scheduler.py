"""The model worker: one thread per model that wakes at each due time, batches every due session into
one WorldModel.step (micro-batching), and drops the frames into each session's latest-frame slot.

Sessions are phase-aligned to a global tick grid so that sessions at the same fps fall due together.
A fault ends only its own session (see `_step_group`; docs/streaming.md, Faults).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from worldlab.config import SessionConfig
from worldlab.engine.session import Session
from worldlab.engine.slot import FrameMeta
from worldlab.model.protocol import ModelError, checked_step

log = logging.getLogger(__name__)
DUE_SLACK_S = 0.002  # sessions due within 2 ms of each other share a tick
LOAD_WINDOW_S = 2.0  # Scheduler.load looks back this far


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
                 config: SessionConfig | None = None):
        cfg = config or SessionConfig()
        self.model = model
        self.micro_batching = micro_batching
        self.step_timeout_s, self.batch_timeout_s = cfg.step_timeout_s, cfg.batch_timeout_s
        self.batch_timeout_factor, self.suspect_steps = cfg.batch_timeout_factor, cfg.suspect_steps
        self.early_tick, self.early_min_s, self.early_repay = (cfg.early_tick, cfg.early_tick_min_ms / 1000,
                                                               cfg.early_tick_repay)
        self._runner: _Runner | None = None  # started with the worker
        self._solo: dict[str, _Runner] = {}  # a runner per suspect session
        self._inflight: dict[str, tuple] = {}  # session id -> (future, started, inputs) of an overrun call
        self._recent_step_s: collections.deque = collections.deque(maxlen=30)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ticks = 0
        self.batch_sizes: list[int] = []
        self._busy: collections.deque = collections.deque(maxlen=4096)  # (start, end) of recent ticks, monotonic

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
        for runner in list(self._solo.values()):
            runner.stop()
        with self._lock:
            for s in self._sessions.values():
                s.close()
            self._sessions.clear()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def add(self, session: Session) -> None:
        period = 1.0 / session.fps_target
        session.stepping_since = time.monotonic()
        session.next_due = math.ceil(session.stepping_since / period) * period
        session.ahead_s = 0.0
        session.wake = self._wake if self.early_tick else None
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
        self._inflight.pop(session.id, None)  # its call's result, if it ever comes, is dropped
        self._drop_solo(session)

    def stepping(self, session: Session) -> bool:
        with self._lock:
            return session.id in self._sessions

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def load(self, window_s: float = LOAD_WINDOW_S) -> float:
        """Share of the last `window_s` this worker spent in ticks (stepping, waiting for its steps,
        delivering): 1.0 = it never rested, and sessions fall behind their fps."""
        now = time.monotonic()
        since = now - window_s
        return sum(max(0.0, end - max(start, since)) for start, end in list(self._busy) if end > since) / window_s

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            sessions = self.sessions()
            if not sessions:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            now = time.monotonic()
            if self.early_tick:
                self._pull_key_changes(sessions, now)
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
            self._busy.append((now, time.monotonic()))
            del due  # else a session closed since stays alive in this frame (with its room) until the next tick

    def _pull_key_changes(self, sessions: list[Session], now: float) -> None:
        """Input-aware tick phase: a session with a key change whose next tick is more than early_min_s away
        falls due now, unless that would put it more than one period ahead of the grid (see _tick's repay)."""
        for s in sessions:
            gain = s.next_due - now
            if gain > self.early_min_s and s.ahead_s + gain <= 1.0 / s.fps_target and s.key_changed() \
                    and s.id not in self._inflight:
                s.ahead_s += gain
                s.next_due = now
                s.metrics.event("early_ticks")

    # -- faults --------------------------------------------------------------------------------
    # Every model call runs on a runner thread and the tick waits for it only until a deadline: a thread cannot
    # be killed, so an overrunning call is left to finish on its runner (a new runner takes over) and the
    # sessions in it go on alone (`suspect`), each on its own runner, without holding up anyone else.
    def _call(self, fn, *args):
        """fn(*args) on the runner thread (recache, which is per session); StepTimeout after step_timeout_s."""
        future = self._runner.submit(fn, *args)
        try:
            return future.result(timeout=self.step_timeout_s)
        except FutureTimeout:
            self._runner = self._replace(self._runner)
            raise StepTimeout(f"{getattr(fn, '__name__', 'model call')} took over {self.step_timeout_s:g} s") from None

    def _replace(self, runner: _Runner) -> _Runner:
        runner.stop()
        return _Runner(f"{self._thread.name}-step")

    def _solo_runner(self, s: Session) -> _Runner:
        if s.id not in self._solo:
            self._solo[s.id] = _Runner(f"{self._thread.name}-{s.id}")
        return self._solo[s.id]

    def _drop_solo(self, s: Session) -> None:
        runner = self._solo.pop(s.id, None)
        if runner is not None:
            runner.stop()

    def _fail(self, session: Session, exc: Exception) -> None:
        stalled = isinstance(exc, StepTimeout)
        log.warning("session %s ended: the model %s (%s)", session.id, "stalled" if stalled else "failed", exc,
                    exc_info=not stalled)
        self.detach(session)
        if stalled:
            session.fail("model_stalled", "the model stopped responding for this session; it has ended")
        else:
            why = f": {exc}" if isinstance(exc, ModelError) else ""  # the protocol breach is the model author's clue
            session.fail("model_failed", f"the model failed on this session; it has ended{why}")

    def _deadline_s(self, sessions: list[Session]) -> float:
        """How long a tick waits for a step: the floor, or a multiple of the slowest recent step (a loaded
        machine must not look like a stall: a split rebuilds its sessions from their last frames only).
        step_timeout_s while the model warms up or a session has too few frames to be rebuilt."""
        if len(self._recent_step_s) < 3 or any(len(s.recent) < 2 for s in sessions):
            return self.step_timeout_s
        return max(self.batch_timeout_s, self.batch_timeout_factor * max(self._recent_step_s))

    def _step(self, due: list[Session], inputs: list) -> list:
        """Start one call per group and wait for them until the deadline: the non-suspects in one batch
        (micro-batching) or each alone, every suspect alone on its own runner (they run side by side).
        Returns a frame per due session; None where it failed or its call is still in flight."""
        if self.micro_batching:
            groups = [[i for i, s in enumerate(due) if not s.suspect]] + [[i] for i, s in enumerate(due) if s.suspect]
        else:
            groups = [[i] for i in range(len(due))]
        calls = []
        for group in filter(None, groups):
            sessions = [due[i] for i in group]
            runner = self._runner if not sessions[0].suspect else self._solo_runner(sessions[0])
            future = runner.submit(self._model_step, [s.state for s in sessions], [inputs[i][0] for i in group])
            calls.append((group, sessions, runner, future))
        t0, frames = time.perf_counter(), [None] * len(due)
        for group, sessions, runner, future in calls:
            try:
                wait = t0 + self._deadline_s(sessions) - time.perf_counter()
                out = list(future.result(timeout=max(0.0, wait)))
            except FutureTimeout:
                self._overran(sessions, [inputs[i] for i in group], runner, future, t0)
                continue
            except Exception as exc:
                self._raised(sessions, [inputs[i] for i in group], exc, frames, group)
                continue
            ms = (time.perf_counter() - t0) * 1000
            if len(sessions) > 1 or not sessions[0].suspect:
                self._recent_step_s.append(ms / 1000)
            for i, s, frame in zip(group, sessions, out):
                frames[i] = (frame, ms)
                s.suspect = max(0, s.suspect - 1)
        return frames

    def _raised(self, sessions, inputs, exc, frames, group) -> None:
        """A step that raised: alone, its session ends with `model_failed`; in a batch the culprit is not
        known, so the batch is stepped again one session at a time."""
        if len(sessions) == 1:
            self._fail(sessions[0], exc)
            return
        log.warning("a batch of %d sessions failed (%s): stepping them one by one", len(sessions), exc)
        for i, s, inp in zip(group, sessions, inputs):
            t0 = time.perf_counter()
            try:
                frame = self._call(self._model_step, [s.state], [inp[0]])[0]
            except Exception as exc_one:
                self._fail(s, exc_one)
                continue
            frames[i] = (frame, (time.perf_counter() - t0) * 1000)

    def _overran(self, sessions, inputs, runner, future, t0: float) -> None:
        """Past the deadline: the call goes on without us. Alone, the session waits for it in flight (its
        frame is delivered late, or it ends with `model_stalled` after step_timeout_s). In a batch, whose
        states that call still holds, each session is rebuilt from its recent frames and stepped alone."""
        if runner is self._runner:
            self._runner = self._replace(runner)
        else:
            self._solo.pop(sessions[0].id, None)
            runner.stop()
        if len(sessions) == 1:
            sessions[0].suspect = self.suspect_steps
            self._inflight[sessions[0].id] = (future, t0, inputs[0])
            return
        log.warning("a batch of %d sessions overran %.0f ms: stepping them alone", len(sessions),
                    self._deadline_s(sessions) * 1000)
        for s, inp in zip(sessions, inputs):
            s.suspect = self.suspect_steps
            solo = self._solo_runner(s)
            self._inflight[s.id] = (solo.submit(self._rebuild_and_step, s, inp[0]), t0, inp)

    def _rebuild_and_step(self, s: Session, keys) -> list:
        """On the session's own runner: a new state prefilled from its recent frames (the old one is held by
        the abandoned call), then its step."""
        s.state = s.rebuild_state(self.model)
        return self._model_step([s.state], [keys])

    def _model_step(self, states, keys) -> np.ndarray:
        return checked_step(self.model, states, keys)  # frames of the wrong shape/dtype end the session, by name

    def _settle(self, s: Session, inflight: tuple) -> tuple | None:
        """A due session whose call is in flight: (frame, ms, inputs) once the call is done, None while it runs;
        past step_timeout_s it ends with `model_stalled` (and its runner is abandoned)."""
        future, t0, inp = inflight
        waited = time.perf_counter() - t0
        if future.done():
            self._inflight.pop(s.id, None)
            try:
                return future.result()[0], waited * 1000, inp
            except Exception as exc:
                self._fail(s, exc)
                return None
        if waited > self.step_timeout_s:
            self.detach(s)
            self._fail(s, StepTimeout(f"step took over {self.step_timeout_s:g} s"))
        return None

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
        due_at = {s.id: s.next_due for s in due}  # before the advance below: the instant each tick was due
        inputs, settled = [], []
        for s in due:
            if (inflight := self._inflight.get(s.id)) is not None:  # its inputs wait (keys held, prompt pending)
                if (done := self._settle(s, inflight)) is not None:
                    settled.append((s, done))
                continue
            keys, seq, queue_ms, prompt, had_input = s.take_inputs(tick_start)
            if prompt is None or self._recache(s, prompt[0]):
                inputs.append((keys, seq, queue_ms, had_input))
                settled.append((s, None))
        stepping = [s for s, done in settled if done is None]
        frames = iter(self._step(stepping, inputs))
        done_at = time.monotonic()
        self.ticks += 1
        self.batch_sizes.append(len(stepping))
        del self.batch_sizes[:-1000]
        fresh = iter(inputs)
        for s, late in settled:
            if late is None:
                result = next(frames)
                frame, ms = result if result is not None else (None, 0.0)
                keys, seq, queue_ms, had_input = next(fresh)
            else:
                frame, ms, (keys, seq, queue_ms, had_input) = late
            if frame is not None and s.fault is None:
                meta = FrameMeta(s.frame_id + 1, seq, done_at, ms, queue_ms, due_at[s.id])
                self._deliver(s, frame, keys, meta, had_input)
        for s in due:
            period = 1.0 / s.fps_target
            repay = min(s.ahead_s, self.early_repay * period)  # an early tick's lead, given back a little a frame
            s.ahead_s -= repay
            s.next_due += period + repay
            if s.next_due < done_at - period:  # fell more than a frame behind: skip ahead, don't burst
                s.metrics.event("late_ticks")
                s.next_due = math.ceil(done_at / period) * period
                s.ahead_s = 0.0

    @staticmethod
    def _deliver(s: Session, frame, keys, meta: FrameMeta, had_input: bool) -> None:
        s.frame_id = meta.frame_id
        s.note_frame(frame, keys, meta)  # before the slot: the track must find the frame's sound when it sends it
        s.slot.put(frame, meta)
        s.metrics.add("model_ms", meta.model_ms)
        s.metrics.event("frames")
        if had_input:
            s.metrics.add("queue_ms", meta.queue_ms)
            s.record_ack(meta.seq, meta.frame_id)
