"""The scheduler on a hand-moved clock and a recording model: sessions due together share one step
(micro-batching), phase alignment batches different rates, a late session skips ahead instead of
bursting, input seqs map to the frame ids acked, a prompt switch recaches before its step, and a key change
is stepped at once (input-aware tick phase) with its lead paid back so frames per second stay exact."""

import time

import numpy as np
import pytest

from worldlab.config import SessionConfig
from worldlab.engine import Scheduler, Session
from worldlab.engine import scheduler as scheduler_mod
from worldlab.engine import session as session_mod

from tests.engine.fakes import FakeClock, RecordingModel, until

pytestmark = pytest.mark.timeout(60)
SETTLE_S = 0.2  # real time for the worker to loop a few times (it re-reads the clock every <= 50 ms)


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(scheduler_mod, "time", c)
    monkeypatch.setattr(session_mod, "time", c)
    return c


@pytest.fixture
def run(clock):
    """run(micro_batching=True) -> (scheduler started on a RecordingModel, model); stopped after the test."""
    started = []

    def make(**kw):
        model = RecordingModel()
        sched = Scheduler(model, **kw).start()
        started.append(sched)
        return sched, model

    yield make
    for sched in started:
        sched.stop()
        assert not sched.alive


def advance_to(clock, t: float, sched: Scheduler) -> None:
    """Move the clock to t and wait until the worker has caught up: no session is due any more (a tick
    moves each stepped session's next_due on after delivering its frame)."""
    clock.t = t
    until(lambda: all(s.next_due > t for s in sched.sessions()))


def test_two_due_sessions_are_stepped_in_one_call(clock, run):
    sched, model = run()
    a, b = Session(1, "p"), Session(2, "p")
    sched.add(a)
    sched.add(b)
    assert a.next_due == b.next_due  # same rate, same grid point
    advance_to(clock, a.next_due, sched)
    for _ in range(3):
        advance_to(clock, a.next_due, sched)
    time.sleep(SETTLE_S)
    steps = model.steps()
    assert len(steps) == 4 and all(sorted(states) == [1, 2] for _, states, _ in steps)
    assert sched.batch_sizes[-4:] == [2, 2, 2, 2]
    # Each session got the frame of its own state, not its neighbour's.
    for s in (a, b):
        frame, meta, new = s.slot.take()
        assert new and np.all(frame == s.state) and meta.frame_id == s.frame_id == 3


def test_without_micro_batching_each_session_is_stepped_alone(clock, run):
    sched, model = run(micro_batching=False)
    a, b = Session(1, "p"), Session(2, "p")
    sched.add(a)
    sched.add(b)
    advance_to(clock, a.next_due, sched)
    advance_to(clock, a.next_due, sched)
    time.sleep(SETTLE_S)
    steps = model.steps()
    assert len(steps) == 4 and all(len(states) == 1 for _, states, _ in steps)
    assert sorted(s for _, states, _ in steps for s in states) == [1, 1, 2, 2]
    assert a.frame_id == b.frame_id == 1


def test_sessions_joining_mid_period_are_phase_aligned(clock, run):
    """A session added later in the period falls due with the first one; a 15 fps session rides along
    with a 30 fps one every other tick."""
    sched, model = run()
    fast = Session(1, "p", fps_target=30.0)
    sched.add(fast)
    clock.t += 0.4 / 30  # part-way into the period
    slow, late = Session(2, "p", fps_target=15.0), Session(3, "p", fps_target=30.0)
    sched.add(late)
    sched.add(slow)
    assert late.next_due == fast.next_due
    # Four 30 fps periods from the first tick.
    ticks = []
    for n in range(1, 5):
        advance_to(clock, fast.next_due, sched)
        ticks.append(sorted(model.steps()[-1][1]))
    time.sleep(SETTLE_S)
    assert len(model.steps()) == 4  # one step per tick: no session ticked on its own
    with_slow = [t for t in ticks if 2 in t]
    assert len(with_slow) == 2 and all(t == [1, 2, 3] for t in with_slow)
    assert all(t == [1, 3] for t in ticks if 2 not in t)


def test_a_session_that_falls_behind_skips_ahead_instead_of_bursting(clock, run):
    sched, model = run()
    s = Session(1, "p")
    sched.add(s)
    period = 1 / s.fps_target
    advance_to(clock, s.next_due, sched)
    assert s.metrics.rate("late_ticks") == 0
    stall_end = s.next_due + 5.5 * period  # the worker was held up for over 5 periods
    advance_to(clock, stall_end, sched)
    time.sleep(SETTLE_S)
    assert len(model.steps()) == 2  # one frame for the late tick, not the 5 missed ones in a burst
    assert s.metrics.rate("late_ticks") > 0
    assert stall_end < s.next_due <= stall_end + period  # back on the grid, the next slot after now
    advance_to(clock, s.next_due, sched)
    assert s.frame_id == 2  # frame ids stay consecutive: skipped slots are not numbered


def test_input_seq_is_acked_with_the_first_frame_that_reflects_it(clock, run):
    sched, model = run(config=SessionConfig(early_tick=False))  # all three messages land before the tick
    s = Session(1, "p")
    sched.add(s)
    advance_to(clock, s.next_due, sched)
    assert s.pop_acks() == []  # no input yet: nothing to ack
    s.set_action(["right"], seq=7)
    s.set_action(["right", "up"], seq=9)
    s.set_action(["up"], seq=8)  # arrived out of order: the held keys are the newest message's ...
    clock.t += 0.004
    advance_to(clock, s.next_due, sched)
    _, states, actions = model.steps()[-1]
    assert actions == [("up",)]
    frame, meta, _ = s.slot.take()
    assert meta.seq == 9 and meta.frame_id == 1  # ... but the seq acked is the highest seen
    assert s.pop_acks() == [(9, 1)] and s.pop_acks() == []
    assert 0 < meta.queue_ms  # input arrival -> tick start, on the same clock
    advance_to(clock, s.next_due, sched)
    assert s.pop_acks() == []  # held keys, no new message: no new ack
    assert model.steps()[-1][2] == [("up",)]  # the keys stay held


def test_prompt_switch_recaches_before_the_step_that_uses_it(clock, run):
    sched, model = run()
    a, b = Session(1, "a walk in the forest"), Session(2, "a walk in the forest")
    sched.add(a)
    sched.add(b)
    advance_to(clock, a.next_due, sched)
    a.set_prompt("a snowy night", seq=3)
    advance_to(clock, a.next_due, sched)
    calls = model.calls
    i_recache = calls.index(("recache", 1, "a snowy night"))
    assert calls[i_recache + 1][0] == "step" and sorted(calls[i_recache + 1][1]) == [1, 2]
    assert [c for c in calls if c[0] == "recache"] == [("recache", 1, "a snowy night")]  # b untouched, once
    assert a.prompt == "a snowy night" and b.prompt == "a walk in the forest"
    assert a.pop_acks() == [(3, 1)] and b.pop_acks() == []


def test_removed_session_is_no_longer_stepped_and_is_closed(clock, run):
    sched, model = run()
    a, b = Session(1, "p"), Session(2, "p")
    sched.add(a)
    sched.add(b)
    advance_to(clock, a.next_due, sched)
    sched.remove(a)
    assert a.closed and a.slot.closed and sched.sessions() == [b]
    advance_to(clock, b.next_due, sched)
    assert model.steps()[-1][1] == [2]


# -- input-aware tick phase -----------------------------------------------------------------------------
def test_a_key_change_is_stepped_at_once_and_its_lead_paid_back_to_the_grid(clock, run):
    sched, model = run()
    s = Session(1, "p")
    sched.add(s)
    period, repay = 1 / 30, SessionConfig().early_tick_repay / 30
    advance_to(clock, s.next_due, sched)  # frame 0, on the grid
    grid = s.next_due
    clock.t += 0.010  # 10 ms into the period: the next tick is 23 ms away
    s.set_action(["right"], seq=5)
    until(lambda: s.frame_id == 1)  # stepped now, the clock never reached the grid point
    assert model.steps()[-1][2] == [("right",)] and s.pop_acks() == [(5, 1)]
    assert s.slot.take()[1].queue_ms == 0.0  # the key waited for no tick
    lead = grid - clock.t
    assert s.ahead_s == pytest.approx(lead - repay) and s.next_due == pytest.approx(clock.t + period + repay)
    dues = [s.next_due]
    while s.ahead_s > 0:
        advance_to(clock, s.next_due, sched)
        dues.append(s.next_due)
    assert all(period < d <= period + repay + 1e-9 for d in np.diff(dues))  # stretched by <= 1/8 period
    assert s.next_due == pytest.approx(grid + (len(dues) - 1 + 1) * period)  # back on the shared grid
    # World time: as many frames as grid points passed, the early one included (no extra frame).
    assert s.frame_id == round((s.next_due - grid) / period)


def test_a_session_is_never_more_than_one_period_ahead(clock, run):
    sched, model = run()
    s = Session(1, "p")
    sched.add(s)
    period = 1 / 30
    advance_to(clock, s.next_due, sched)
    clock.t += 0.002
    s.set_action(["right"], seq=1)
    until(lambda: s.frame_id == 1)  # 31 ms ahead now
    clock.t += 0.003
    s.set_action(["left"], seq=2)  # pulling again would put it ~2 periods ahead: it waits for its tick
    time.sleep(SETTLE_S)
    assert s.frame_id == 1 and s.ahead_s <= period


def test_an_early_session_rejoins_the_batch_once_its_lead_is_paid(clock, run):
    sched, model = run()
    a, b = Session(1, "p"), Session(2, "p")
    sched.add(a)
    sched.add(b)
    advance_to(clock, a.next_due, sched)
    clock.t += 0.015
    a.set_action(["up"], seq=1)
    until(lambda: a.frame_id == 1)
    assert model.steps()[-1][1] == [1]  # a alone, early
    for _ in range(10):
        advance_to(clock, min(a.next_due, b.next_due), sched)
    time.sleep(SETTLE_S)
    assert a.ahead_s == 0 and a.next_due == pytest.approx(b.next_due)
    assert sorted(model.steps()[-1][1]) == [1, 2]  # one batched step again
    assert a.frame_id == b.frame_id  # same world time


def test_with_early_ticks_off_a_key_waits_for_its_tick(clock, run):
    sched, model = run(config=SessionConfig(early_tick=False))
    s = Session(1, "p")
    sched.add(s)
    advance_to(clock, s.next_due, sched)
    clock.t += 0.010
    s.set_action(["right"], seq=1)
    time.sleep(SETTLE_S)
    assert s.frame_id == 0
    advance_to(clock, s.next_due, sched)
    assert s.frame_id == 1 and s.slot.take()[1].queue_ms == pytest.approx(1000 * (1 / 30 - 0.010), abs=0.5)


def test_a_frames_due_at_is_its_ticks_due_instant_not_when_it_ran(clock, run):
    sched, model = run()
    s = Session(1, "p")
    sched.add(s)
    due = s.next_due
    advance_to(clock, due + 0.005, sched)  # the worker reaches the tick 5 ms late
    assert s.slot.take()[1].due_at == due
    clock.t += 0.010
    s.set_action(["right"], seq=1)  # an early tick: due at the instant it was pulled to
    until(lambda: s.frame_id == 1)
    assert s.slot.take()[1].due_at == clock.t
