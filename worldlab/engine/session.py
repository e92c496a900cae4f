"""One live session: model state, the held keys and pending prompt, pacing clock, frame slot, metrics.

Inputs arrive from the network thread; the scheduler thread reads them at the next tick, so every
generated frame records the newest input seq it reflects (for `ack`).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Any

import numpy as np

from worldlab.config import SessionConfig
from worldlab.env import normalize_keys
from worldlab.engine.metrics import Rolling
from worldlab.engine.slot import LatestFrameSlot

__all__ = ["Session", "normalize_keys"]  # normalize_keys: the key names a session accepts, for the ctl protocol

_ids = itertools.count(1)


class Session:
    def __init__(self, state: Any, prompt: str, *, fps_target: float = 30.0, room: str | None = None):
        low, high = SessionConfig.fps_range
        if not low <= fps_target <= high:
            raise ValueError(f"fps_target must be in [{low:g}, {high:g}], got {fps_target}")
        self.id = f"s{next(_ids)}"
        self.room = room or self.id
        self.state = state
        self.prompt = prompt
        self.fps_target = fps_target
        self.slot = LatestFrameSlot()
        self.metrics = Rolling()
        self.origin = time.monotonic()  # one monotonic clock per session: pts and pacing derive from it
        self.next_due = self.origin
        self.stepping_since = self.origin  # when a scheduler last started stepping it (after an idle spell too)
        self.frame_id = -1
        self._lock = threading.Lock()
        self._keys: tuple[str, ...] = ()
        self._seq = -1  # newest input seq received
        self._input_at: float | None = None  # arrival time of the newest not-yet-applied input
        self._key_change = False  # an action (not a prompt) is among the unapplied inputs
        self.wake: threading.Event | None = None  # set by the scheduler: a key change wakes it (early tick)
        self.ahead_s = 0.0  # how far an early tick put this session ahead of the shared tick grid (s)
        self._pending_prompt: tuple[str, int] | None = None
        self.acks: list[tuple[int, int]] = []  # (seq, frame_id) for the transport to send
        self.closed = False
        self.fault: tuple[str, str] | None = None  # (error code, message) of the fault that ended it
        self.on_fault = None  # called once, from whichever thread hit the fault (the transport ends the room)
        self.suspect = 0  # caught in an overrun call: steps it is stepped alone before rejoining the batch
        # The last frames and the keys that produced them: enough to prefill another model variant
        # (hot-switching weights / window / KV compression) without restarting the session.
        self.recent: collections.deque = collections.deque(maxlen=8)
        self.frame_log: list | None = None  # set by recorders: (time, frame_id, seq, model_ms, queue_ms)
        self.sound = None  # its worldlab.engine.audio.SoundScore when the stream has audio: reads every frame

    # -- network thread ------------------------------------------------------------------------
    def set_action(self, keys, seq: int) -> None:
        with self._lock:
            self._keys = tuple(keys)
            self._note_input(seq)
            self._key_change = True
        if self.wake is not None:
            self.wake.set()

    def set_prompt(self, text: str, seq: int) -> None:
        with self._lock:
            self._pending_prompt = (text, seq)
            self._note_input(seq)

    def _note_input(self, seq: int) -> None:
        self._seq = max(self._seq, seq)
        if self._input_at is None:
            self._input_at = time.monotonic()

    def key_changed(self) -> bool:
        """An action arrived that no tick has applied yet."""
        with self._lock:
            return self._key_change

    def pop_acks(self) -> list[tuple[int, int]]:
        with self._lock:
            out, self.acks = self.acks, []
            return out

    # -- scheduler thread ----------------------------------------------------------------------
    def take_inputs(self, tick_start: float):
        """(keys, seq, queue_ms, pending prompt) as of this tick; marks the inputs applied."""
        with self._lock:
            queue_ms = (tick_start - self._input_at) * 1000 if self._input_at is not None else 0.0
            had_input = self._input_at is not None
            self._input_at = None
            self._key_change = False
            prompt, self._pending_prompt = self._pending_prompt, None
            return self._keys, self._seq, queue_ms, prompt, had_input

    def note_frame(self, frame, keys, meta) -> None:
        self.recent.append((frame, tuple(keys)))
        if self.sound is not None:
            self.sound.observe(meta.frame_id, frame)
        log = self.frame_log
        if log is not None:
            log.append((meta.produced_at, meta.frame_id, meta.seq, meta.model_ms, meta.queue_ms))

    def rebuild_state(self, model) -> Any:
        """A new state of `model` prefilled from the recent frames and keys (hot switch, stall recovery)."""
        recent = list(self.recent)
        if len(recent) < 2:
            raise ValueError("the session has not produced enough frames to rebuild its state yet")
        state = model.init_state(self.prompt)
        model.prefill(state, np.stack([f for f, _k in recent]), [k for _f, k in recent[1:]])
        return state

    def record_ack(self, seq: int, frame_id: int) -> None:
        with self._lock:
            self.acks.append((seq, frame_id))

    def fail(self, code: str, message: str) -> None:
        """Mark a fatal fault (model_failed, model_stalled, encoder_failed); only the first one counts."""
        with self._lock:
            if self.fault is not None:
                return
            self.fault = (code, message)
        self.slot.close()
        if self.on_fault is not None:
            self.on_fault()

    def close(self) -> None:
        self.closed = True
        self.slot.close()
