"""Session: the fps range, inputs as the scheduler takes them (held keys, newest seq, queue time, a
pending prompt applied once), acks, the first fault only, closing, and what a state rebuild needs."""

import numpy as np
import pytest

from worldlab.config import SessionConfig
from worldlab.engine import Session
from worldlab.engine import session as session_mod
from worldlab.engine.slot import FrameMeta

from tests.engine.fakes import FakeClock


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(session_mod, "time", c)
    return c


@pytest.mark.parametrize("fps", [SessionConfig.fps_range[0] - 0.5, SessionConfig.fps_range[1] + 1])
def test_fps_outside_the_configured_range_is_refused(fps):
    with pytest.raises(ValueError, match="fps_target"):
        Session(None, "p", fps_target=fps)


def test_ids_are_unique_and_the_room_defaults_to_the_id():
    a, b = Session(None, "p"), Session(None, "p", room="r1")
    assert a.id != b.id and a.room == a.id and b.room == "r1"


def test_inputs_are_taken_once_with_the_queue_time_of_the_oldest_unapplied_one(clock):
    s = Session(None, "p")
    assert s.take_inputs(clock.t) == ((), -1, 0.0, None, False)  # idle: no keys, no seq
    s.set_action(["left"], 4)
    clock.t += 0.010
    s.set_prompt("a snowy night", 5)  # later input: the queue time still runs from the first
    clock.t += 0.005
    keys, seq, queue_ms, prompt, had_input = s.take_inputs(clock.t)
    assert keys == ("left",) and seq == 5 and prompt == ("a snowy night", 5) and had_input
    assert queue_ms == pytest.approx(15.0)
    keys, seq, queue_ms, prompt, had_input = s.take_inputs(clock.t + 1)
    assert keys == ("left",) and seq == 5  # keys stay held, the seq stays the newest seen
    assert prompt is None and not had_input and queue_ms == 0.0  # the prompt is applied once


def test_acks_are_handed_out_once_in_order():
    s = Session(None, "p")
    s.record_ack(3, 10)
    s.record_ack(4, 11)
    assert s.pop_acks() == [(3, 10), (4, 11)] and s.pop_acks() == []


def test_only_the_first_fault_counts_and_it_closes_the_slot():
    s, calls = Session(None, "p"), []
    s.on_fault = lambda: calls.append(s.fault)
    s.fail("model_failed", "first")
    s.fail("encoder_failed", "second")
    assert s.fault == ("model_failed", "first") and calls == [("model_failed", "first")]
    assert s.slot.closed and not s.closed  # ended by the fault; the transport closes it


def test_close_closes_the_slot():
    s = Session(None, "p")
    s.close()
    assert s.closed and s.slot.closed and s.slot.wait_first(0.01)


class PrefillModel:
    def init_state(self, prompt):
        return {"prompt": prompt}

    def prefill(self, state, frames, actions):
        state["frames"], state["actions"] = frames, actions


def test_rebuild_needs_two_frames_then_prefills_from_the_recent_frames_and_keys():
    s = Session(None, "a sunny desert")
    s.note_frame(np.zeros((2, 2, 3), np.uint8), ["up"], FrameMeta(0, -1, 0.0, 1.0, 0.0))
    with pytest.raises(ValueError, match="enough frames"):
        s.rebuild_state(PrefillModel())
    s.frame_log = []
    s.note_frame(np.ones((2, 2, 3), np.uint8), ["left"], FrameMeta(1, 2, 5.0, 1.5, 0.25))
    state = s.rebuild_state(PrefillModel())
    assert state["prompt"] == "a sunny desert" and state["frames"].shape == (2, 2, 2, 3)
    assert state["frames"][1].max() == 1 and state["actions"] == [("left",)]  # the keys after the first frame
    assert s.frame_log == [(5.0, 1, 2, 1.5, 0.25)]


def test_recent_frames_are_bounded():
    s = Session(None, "p")
    for i in range(50):
        s.note_frame(np.zeros((1, 1, 3), np.uint8), [], FrameMeta(i, -1, 0.0, 0.0, 0.0))
    assert len(s.recent) < 50
