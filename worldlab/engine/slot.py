"""A single-frame mailbox between the model worker and the video track: the newest frame wins.

Never a queue: a consumer that falls behind gets the newest frame and the skipped ones count as drops.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FrameMeta:
    frame_id: int
    seq: int  # newest client input seq this frame reflects (-1: none yet)
    produced_at: float  # time.monotonic() when the model finished it
    model_ms: float
    queue_ms: float  # input arrival -> start of the tick that used it (0 when idle)
    due_at: float | None = None  # time.monotonic() the scheduler's tick for it was due (None: not from a tick)


class LatestFrameSlot:
    def __init__(self):
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._meta: FrameMeta | None = None
        self.produced = 0
        self.consumed = 0
        self.dropped = 0
        self._last_taken = -1
        self.closed = False
        self._listeners: list = []  # callables run after every put, on the producing (model) thread

    def listen(self, fn) -> None:
        """fn() after every put: how an event loop learns a frame landed without polling for it."""
        self._listeners.append(fn)

    def unlisten(self, fn) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def put(self, frame: np.ndarray, meta: FrameMeta) -> None:
        with self._cond:
            self._frame, self._meta = frame, meta
            self.produced += 1
            self._cond.notify_all()
        for fn in list(self._listeners):
            fn()

    def new_seq(self) -> int | None:
        """The input seq of the newest frame if it has not been taken yet (None: nothing new)."""
        with self._cond:
            new = self._meta is not None and self._meta.frame_id != self._last_taken
            return self._meta.seq if new else None

    def take(self) -> tuple[np.ndarray | None, FrameMeta | None, bool]:
        """(frame, meta, is_new): the newest frame; frames produced but never taken count as dropped."""
        with self._cond:
            if self._meta is None:
                return None, None, False
            new = self._meta.frame_id != self._last_taken
            if new:
                if self._last_taken >= 0:
                    self.dropped += max(0, self._meta.frame_id - self._last_taken - 1)
                self._last_taken = self._meta.frame_id
                self.consumed += 1
            return self._frame, self._meta, new

    def has_new(self) -> bool:
        with self._cond:
            return self._meta is not None and self._meta.frame_id != self._last_taken

    def wait_first(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._meta is not None or self.closed, timeout)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
