"""The metric dictionary (one set of names everywhere), the one percentile definition, and rolling
windows that summarize the metrics.

Names: capture_ms queue_ms model_ms encode_ms rtt_ms decode_ms g2g_ms fps_target fps_actual drop_pct
bitrate_kbps kv_bytes relay_pct.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

METRICS = ("capture_ms", "queue_ms", "model_ms", "encode_ms", "rtt_ms", "decode_ms", "g2g_ms",
           "fps_target", "fps_actual", "drop_pct", "bitrate_kbps", "kv_bytes", "relay_pct")
TIMED = ("capture_ms", "queue_ms", "model_ms", "encode_ms", "rtt_ms", "decode_ms", "g2g_ms")


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0..100) of `values` by linear interpolation between closest ranks (numpy's
    default); None for no values. The page (player.js `pct`), the server and the benchmarks all use it."""
    v = np.asarray(values, dtype=float).ravel()
    return float(np.percentile(v, q)) if v.size else None


def percentiles(values, qs=(50, 95, 99)) -> dict:
    """{"p50": ..., "p95": ..., "p99": ..., "n": count} of `values` (None where there are none)."""
    return {**{f"p{q:g}": percentile(values, q) for q in qs}, "n": int(np.size(values))}


class Rolling:
    """Thread-safe rolling samples of the timed metrics plus event counters for rates."""

    def __init__(self, horizon_s: float = 5.0, maxlen: int = 2048):
        self.horizon = horizon_s
        self._lock = threading.Lock()
        self._samples = {k: collections.deque(maxlen=maxlen) for k in TIMED}
        self._events = collections.defaultdict(lambda: collections.deque(maxlen=4096))

    def add(self, name: str, value: float) -> None:
        with self._lock:
            self._samples[name].append((time.monotonic(), float(value)))

    def event(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._events[name].append((time.monotonic(), amount))

    def rate(self, name: str, window_s: float = 2.0) -> float:
        now = time.monotonic()
        with self._lock:
            ev = [a for t, a in self._events[name] if now - t <= window_s]
        return sum(ev) / window_s

    def values(self, name: str) -> np.ndarray:
        now = time.monotonic()
        with self._lock:
            return np.array([v for t, v in self._samples[name] if now - t <= self.horizon])

    def p(self, name: str, q: float = 50.0) -> float | None:
        return percentile(self.values(name), q)

    def summary(self) -> dict:
        out = {}
        for k in TIMED:
            out[k] = self.p(k, 50)
            out[k + "_p95"] = self.p(k, 95)
        return out
