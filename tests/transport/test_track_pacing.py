"""RoomTrack's pacing rule: after a new model frame the next send instant is that frame's production + one
period (a little early), so frames go out as they land instead of waiting in the slot for a grid of another
phase; after a repeat (the model is late) the grid moves on by one period; a frame that answers new input
(an early tick) goes at once, any other not before the instant."""

import time

import numpy as np
import pytest

from worldlab.engine.session import Session
from worldlab.engine.slot import FrameMeta
from worldlab.transport.track import LAND_EARLY_S, RoomTrack


def put(session, frame_id: int, produced_at: float, seq: int = -1) -> None:
    session.slot.put(np.zeros((64, 64, 3), np.uint8), FrameMeta(frame_id, seq, produced_at, 1.0, 0.0))


async def test_the_send_instant_locks_to_the_models_frames_not_to_its_own_grid():
    session = Session(None, "forest", fps_target=30.0)
    track = RoomTrack(session, frame_shape=(64, 64, 3))
    period = 1 / 30
    put(session, 0, time.monotonic())
    await track.recv()  # the first frame: sent at once
    landed = time.monotonic() - 0.010  # the model's next frame landed 10 ms ago, off the track's old phase
    put(session, 1, landed)
    await track.recv()
    assert track._next_at == pytest.approx(landed + period - LAND_EARLY_S)  # the next instant: its next frame
    before = track._next_at
    await track.recv()  # nothing new by the deadline: a repeat, and the grid moves on by one period
    assert track.repeats == 1 and track._next_at == pytest.approx(max(before + period, time.monotonic() - period),
                                                                  abs=2e-3)
    track.stop()


async def test_a_frame_answering_new_input_goes_at_once_any_other_waits_for_its_instant():
    session = Session(None, "forest", fps_target=30.0)
    track = RoomTrack(session, frame_shape=(64, 64, 3))
    put(session, 0, time.monotonic())
    await track.recv()
    put(session, 1, time.monotonic())  # no input in it: the next instant is a period after it
    await track.recv()
    put(session, 2, time.monotonic())  # lands early, still no new input
    instant = track._next_at
    await track._pace()
    assert time.monotonic() >= instant  # held to the instant (the pacing of the stream)
    await track.recv()  # sends it: the next instant is a period after it
    put(session, 3, time.monotonic(), seq=7)  # an early tick answering a key
    t0 = time.monotonic()
    await track._pace()
    assert time.monotonic() < track._next_at and time.monotonic() - t0 < 0.010  # not held ~31 ms
    track.stop()
    assert not session.slot._listeners  # the model thread no longer calls into a stopped track
