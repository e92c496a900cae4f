"""Memory of a long-lived server: a cap on glibc's malloc arenas, the start-up heap frozen out of the garbage
collector, and closed rooms' memory released on a schedule, so RSS follows what the live rooms use.

Measured (docs/streaming.md "Memory under churn"): a closed room's aiortc objects (peer connection, transports,
RTP rate counters, codec contexts) form reference cycles, so only the collector's rare full pass frees them and
their native buffers; with ~75,000 start-up objects to walk it ran 7 times in 100 sessions, and 145 MB of dead
rooms waited. Freed, the pages stayed in glibc's arenas (up to 8 per core) until a malloc_trim.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import os
import time

M_ARENA_MAX = -8  # mallopt parameter number (glibc malloc.h)
RELEASE_SETTLE_S = 30.0  # keep releasing this long after the last room closed: peers finish closing in stages


@functools.lru_cache(maxsize=1)  # loaded once, not on every release pass
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


def cap_arenas(n: int) -> bool:
    """At most `n` malloc arenas from now on (call before threads start). No-op when n <= 0, off glibc, or when
    the operator set MALLOC_ARENA_MAX (theirs wins). True if the cap was set."""
    libc = _libc()
    if n <= 0 or libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, n))


def freeze_startup() -> int:
    """Move everything alive now (modules, the model) out of the collector's reach: it is never garbage, and a
    full collection then walks only what sessions created (0.01 ms instead of 42 ms, measured). Returns the
    number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def release(collect: bool = True) -> float:
    """Free unreachable cycles (and the native buffers they hold) when `collect`, then hand free pages of every
    arena back to the OS (malloc_trim, glibc only). Returns the seconds it took."""
    t0 = time.perf_counter()
    if collect:
        gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    return time.perf_counter() - t0


class Releaser:
    """Calls release() every `interval_s` while rooms have closed in the last RELEASE_SETTLE_S, off the event loop,
    so neither a quiet nor a steady server pays for it when nothing was freed."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.last_freed = None  # time.monotonic() of the last room close
        self.count, self.seconds, self.last_s = 0, 0.0, 0.0

    def freed(self) -> None:
        self.last_freed = time.monotonic()

    def due(self, now: float) -> bool:
        return self.last_freed is not None and now - self.last_freed <= RELEASE_SETTLE_S

    async def run(self) -> None:
        if self.interval_s <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval_s)
            if self.due(time.monotonic()):
                # A full gc pass is cheap only once the start-up heap is frozen (serve); in a notebook kernel or
                # a test process it would walk everything they hold, with the GIL, so there: the trim alone.
                self.last_s = await loop.run_in_executor(None, release, gc.get_freeze_count() > 0)
                self.count, self.seconds = self.count + 1, self.seconds + self.last_s
