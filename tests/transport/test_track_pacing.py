"""RoomTrack's pacing rule: after a new model frame the next send instant is that frame's production + one
period (a little early), so frames go out as they land instead of waiting in the slot for a grid of another
phase; after a repeat (the model is late) the grid moves on by one period; a frame that answers new input
(an early tick) goes at once, any other not before the instant. With steady_send a new frame's packet is held
to its tick's due instant + the p90 of the recent (due -> encoded) lags; a later one goes at once."""

import asyncio
import time

import numpy as np
import pytest

from worldlab.engine.session import Session
from worldlab.engine.slot import FrameMeta
from worldlab.transport import track as track_mod
from worldlab.transport.track import LAND_EARLY_S, RoomTrack


def put(session, frame_id: int, produced_at: float, seq: int = -1, due_at: float | None = None) -> None:
    session.slot.put(np.zeros((64, 64, 3), np.uint8), FrameMeta(frame_id, seq, produced_at, 1.0, 0.0, due_at))


class SentAt:
    """An observer keeping each sent frame's Sent record (its `sent` stamp: when recv() handed the packet on)."""

    def __init__(self):
        self.sent = []

    def frame(self, session, sent) -> None:
        self.sent.append(sent)


@pytest.fixture
def sleeps(monkeypatch):
    """The delays the track asked asyncio.sleep for (each still slept, so release instants are real)."""
    asked, real = [], asyncio.sleep

    async def sleep(delay, *a, **kw):
        asked.append(delay)
        return await real(delay, *a, **kw)

    monkeypatch.setattr(track_mod.asyncio, "sleep", sleep)
    return asked


async def steady_track(steady_send: bool, lags):
    """A 60 fps track past its first frame, with the given (due -> encoded) lag history (seconds)."""
    session = Session(None, "forest", fps_target=60.0)
    seen = SentAt()
    track = RoomTrack(session, frame_shape=(64, 64, 3), observers=[seen], steady_send=steady_send)
    put(session, 0, time.monotonic())
    await track.recv()
    track._lags.clear()
    track._lags.extend(lags)
    return session, track, seen


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


LAGS = [0.050 + 0.005 * i for i in range(20)]  # p90 (numpy's linear interpolation): 145.5 ms, above any encode


async def test_steady_send_holds_a_new_frame_to_its_due_instant_plus_the_p90_lag(sleeps):
    session, track, seen = await steady_track(True, LAGS)
    due = time.monotonic()
    put(session, 1, due, seq=3, due_at=due)  # answers new input: the pacing lets it go at once
    await track.recv()
    release = due + float(np.percentile(LAGS, 90))
    assert seen.sent[-1].sent >= release - 1e-3 and sleeps and sleeps[-1] > 0  # held, not sent at once
    assert seen.sent[-1].sent >= seen.sent[-1].encode_end  # held after the encode
    assert len(track._lags) == len(LAGS) + 1 and track._lags[-1] < release - due  # its lag, recorded before the hold
    track.stop()


async def test_steady_send_lets_a_late_frame_go_at_once(sleeps):
    session, track, seen = await steady_track(True, LAGS)
    due = time.monotonic() - 0.5  # its tick was due 500 ms ago: past due + p90 already
    put(session, 1, due + 0.45, seq=3, due_at=due)
    await track.recv()
    assert not sleeps and track._lags[-1] >= 0.5  # not held, its lag still counts
    track.stop()


async def test_without_steady_send_nothing_is_held(sleeps):
    session, track, seen = await steady_track(False, [])
    due = time.monotonic()
    put(session, 1, due, seq=3, due_at=due + 1.0)  # a steady instant a second away would be waited for
    await track.recv()
    assert not sleeps and not track._lags and seen.sent[-1].sent < due + 1.0
    track.stop()
