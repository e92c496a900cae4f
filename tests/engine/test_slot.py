"""LatestFrameSlot: the newest frame wins, frames skipped between takes count as drops (not those made
before the consumer's first take), repeats are not new, and waiting wakes on the first frame or close."""

import threading

import numpy as np
import pytest

from worldlab.engine.slot import FrameMeta, LatestFrameSlot

pytestmark = pytest.mark.timeout(30)


def put(slot, frame_id):
    slot.put(np.full((2, 2, 3), frame_id % 256, np.uint8), FrameMeta(frame_id, seq=-1, produced_at=0.0, model_ms=1.0,
                                                               queue_ms=0.0))


def test_empty_slot_gives_nothing():
    slot = LatestFrameSlot()
    assert slot.take() == (None, None, False)
    assert not slot.has_new() and slot.consumed == slot.dropped == 0


def test_a_slow_consumer_sees_only_the_newest_frame_and_drops_are_counted():
    slot = LatestFrameSlot()
    put(slot, 0)
    put(slot, 1)  # before the first take: the consumer was not there yet, not a drop
    frame, meta, new = slot.take()
    assert new and meta.frame_id == 1 and frame[0, 0, 0] == 1 and slot.dropped == 0
    for i in range(2, 6):
        put(slot, i)
    assert slot.has_new()
    frame, meta, new = slot.take()
    assert new and meta.frame_id == 5 and frame[0, 0, 0] == 5
    assert slot.dropped == 3  # frames 2, 3, 4 were produced and never taken
    assert (slot.produced, slot.consumed) == (6, 2)


def test_taking_again_repeats_the_frame_without_counting_it():
    slot = LatestFrameSlot()
    put(slot, 0)
    slot.take()
    frame, meta, new = slot.take()
    assert not new and meta.frame_id == 0 and frame is not None
    assert not slot.has_new() and (slot.consumed, slot.dropped) == (1, 0)
    put(slot, 1)  # the very next frame: nothing was skipped
    assert slot.take()[2] and slot.dropped == 0


def test_every_frame_is_taken_or_dropped_under_a_racing_producer():
    slot, n = LatestFrameSlot(), 3000
    put(slot, 0)
    slot.take()

    def produce():
        for i in range(1, n):
            put(slot, i)

    taken = [0]
    t = threading.Thread(target=produce)
    t.start()
    while t.is_alive():
        _, meta, new = slot.take()
        if new:
            assert meta.frame_id > taken[-1]  # never an older frame after a newer one
            taken.append(meta.frame_id)
    t.join()
    _, meta, new = slot.take()
    if new:
        taken.append(meta.frame_id)
    assert taken[-1] == n - 1
    assert slot.consumed == len(taken) and slot.consumed + slot.dropped == n


def test_wait_first_wakes_on_a_frame_or_on_close():
    slot = LatestFrameSlot()
    assert slot.wait_first(0.01) is False
    threading.Timer(0.05, put, (slot, 0)).start()
    assert slot.wait_first(10.0) is True
    closing = LatestFrameSlot()
    threading.Timer(0.05, closing.close).start()
    assert closing.wait_first(10.0) is True and closing.closed and closing.take()[0] is None
