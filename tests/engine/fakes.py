"""Test doubles for the engine: a clock the test moves by hand and a model that records every call.

The scheduler reads `time` through its module, so swapping that name for a FakeClock makes its ticks
happen when the test says, not when the wall clock does: assertions are about behaviour, never timing.
"""

import threading
import time

import numpy as np


class FakeClock:
    """monotonic() and perf_counter() return `t`, which only the test moves; anything else is real time."""

    def __init__(self, t: float = 1000.01):  # off the 1/30 s grid: nothing is due when a session is added
        self.t = t

    def monotonic(self) -> float:
        return self.t

    def perf_counter(self) -> float:
        return self.t

    def __getattr__(self, name):
        return getattr(time, name)


class RecordingModel:
    """A WorldModel whose frame for state s is filled with s (states are small ints); it records each
    call as ("step", states, actions) or ("recache", state, prompt) in order."""

    frame_shape = (4, 4, 3)

    def __init__(self):
        self.calls: list[tuple] = []
        self._lock = threading.Lock()

    def step(self, states, actions):
        with self._lock:
            self.calls.append(("step", list(states), [tuple(a) for a in actions]))
        return np.stack([np.full(self.frame_shape, s, np.uint8) for s in states])

    def recache(self, state, prompt):
        with self._lock:
            self.calls.append(("recache", state, prompt))

    def steps(self) -> list[tuple]:
        with self._lock:
            return [c for c in self.calls if c[0] == "step"]


def until(pred, timeout: float = 5.0) -> None:
    """Wait (real time) for the scheduler thread to act; the timeout only bounds a broken test."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("the scheduler did not get there in time")
        time.sleep(0.002)
