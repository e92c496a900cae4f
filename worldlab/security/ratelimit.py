"""Token-bucket rate limits per key (client IP for POST /offer, session for data-channel messages).

Memory is bounded: a key idle long enough to refill its bucket is forgotten (it would start full anyway),
and past `max_keys` the least recently used key goes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from worldlab.config import SessionConfig


class TokenBucket:
    """Each key earns `rate` tokens a second up to `burst`; every allowed event spends one."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = SessionConfig.rate_limit_max_keys, clock=time.monotonic):
        if not (math.isfinite(rate) and rate > 0) or not burst >= 1 or max_keys < 1:
            raise ValueError(f"need rate > 0, burst >= 1, max_keys >= 1; got {rate}, {burst}, {max_keys}")
        self.rate, self.burst, self.max_keys, self.clock = rate, float(burst), max_keys, clock
        self._buckets: OrderedDict = OrderedDict()  # key -> (tokens, last update); oldest update first

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def allow(self, key, now: float | None = None) -> bool:
        """Spend one token for `key` if it has one."""
        now = self.clock() if now is None else now
        self._evict(now)
        tokens = self._tokens(key, now)
        ok = tokens >= 1
        self._buckets[key] = (tokens - 1 if ok else tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok

    def retry_after(self, key, now: float | None = None) -> float:
        """Seconds until `key` has a token again (0 if it has one now)."""
        now = self.clock() if now is None else now
        return max(0.0, (1 - self._tokens(key, now)) / self.rate)

    def _evict(self, now: float) -> None:
        full_after = self.burst / self.rate  # an idle bucket is full again after this long
        while self._buckets:
            key, (_tokens, last) = next(iter(self._buckets.items()))
            if now - last < full_after:
                break
            del self._buckets[key]
