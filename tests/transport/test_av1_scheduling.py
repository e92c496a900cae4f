"""SVT-AV1 and the scheduler: run as root, libsvtav1 switches the thread that opens it to SCHED_FIFO 99 and its
worker threads inherit that; worldlab.transport.encoder.open_time_shared gives every thread its policy back
(a deliberate real-time policy included), and is a silent plain open where it cannot apply."""

import asyncio
import gc
import os
import threading

import numpy as np
import pytest

from worldlab.transport import encoder
from worldlab.transport.encoder import RoomEncoder, open_time_shared

as_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                             reason="not root: SVT-AV1 only switches to SCHED_FIFO when geteuid() == 0")


def policies() -> dict[int, tuple[int, int]]:
    return encoder._policies()


def frames(n: int, size: int = 256):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), np.uint8) for _ in range(n)]


@as_root
def test_av1_encoder_leaves_every_thread_time_shared():
    """As RoomTrack does: encode on the event loop's executor thread, then a thread that thread starts."""
    if any(p != os.SCHED_OTHER for p, _ in policies().values()):
        pytest.skip("the test process already runs a real-time thread (chrt?)")
    enc = RoomEncoder("av1", fps=30.0)

    async def stream():
        loop = asyncio.get_running_loop()
        for t, rgb in enumerate(frames(5)):
            assert await loop.run_in_executor(None, enc.encode, rgb, t * 3000, 800_000) is not None
        # a new rung reopens the encoder on the same executor thread
        await loop.run_in_executor(None, enc.encode, frames(1, 128)[0], 5 * 3000, 500_000)

        def spawn():
            policy = []
            child = threading.Thread(target=lambda: policy.append(os.sched_getscheduler(0)))
            child.start()
            child.join()
            return policy[0]
        return await loop.run_in_executor(None, spawn)

    started_later = asyncio.run(stream())
    now = policies()
    # No count of SVT's own threads: builds differ (one started 16 workers here; PyAV 18.1's starts none and
    # still switches its opener to FIFO 99), and any it starts are among `now`.
    assert {tid: p for tid, p in now.items() if p != (os.SCHED_OTHER, 0)} == {}  # {tid: (policy, priority)}
    assert started_later == os.SCHED_OTHER  # what the opener starts later is time-shared too
    del enc
    gc.collect()


@as_root
def test_a_deliberate_real_time_policy_is_kept_not_raised_to_fifo_99():
    """A thread run real-time on purpose (SCHED_RR 1, as under `chrt -r 1`) keeps it, and SVT's threads get
    what they would have inherited from it, not FIFO 99."""
    seen = {}

    def opener():
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        try:
            before = set(policies())
            enc = RoomEncoder("av1", fps=30.0)
            for t, rgb in enumerate(frames(3)):
                enc.encode(rgb, t * 3000, 800_000)
            now = policies()
            seen["opener"] = now[threading.get_native_id()]
            seen["svt"] = {p for tid, p in now.items() if tid not in before}
            del enc
            gc.collect()  # SVT's threads end with the encoder
        finally:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    worker = threading.Thread(target=opener)
    worker.start()
    worker.join()
    assert seen["opener"] == (os.SCHED_RR, 1)
    assert seen["svt"] <= {(os.SCHED_RR, 1)}  # the threads SVT started, if this build starts any


class FakeContext:
    opened = False

    def open(self):
        self.opened = True


def test_open_time_shared_is_a_silent_plain_open_where_it_cannot_apply(monkeypatch):
    """Not permitted (not root), no /proc (not Linux), no os.sched_* (not Linux): the encoder still opens."""
    calls = []

    def refuse(*args):
        calls.append(args)
        raise PermissionError(1, "Operation not permitted")

    states = iter([{1: (os.SCHED_OTHER, 0)}, {1: (os.SCHED_FIFO, 99)}])  # the open switched thread 1
    monkeypatch.setattr(encoder, "_policies", lambda: next(states))
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    ctx = FakeContext()
    open_time_shared(ctx)
    assert ctx.opened and len(calls) == 1  # tried to put it back, was refused, said nothing
    monkeypatch.undo()

    def no_proc(path):
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(os, "listdir", no_proc)
    ctx = FakeContext()
    open_time_shared(ctx)
    assert ctx.opened
    monkeypatch.undo()

    monkeypatch.delattr(os, "sched_getscheduler")
    ctx = FakeContext()
    open_time_shared(ctx)
    assert ctx.opened
