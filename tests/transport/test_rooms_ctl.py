"""The pieces PeerHub was split into, on their own: the room registry's admission rules and the one ctl
handler (data channel, WebSocket and widget comm) — what reaches the session, what is refused and how."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from worldlab.config import SessionConfig
from worldlab.transport import protocol
from worldlab.transport.caps import CostControls
from worldlab.transport.ctl import Ctl
from worldlab.transport.rooms import OfferError, Room, RoomRegistry


class FakeSession:
    def __init__(self):
        self.id, self.frame_id, self.inputs = "s1", 7, []

    def set_action(self, keys, seq):
        self.inputs.append(("action", tuple(keys), seq))

    def set_prompt(self, text, seq):
        self.inputs.append(("prompt", text, seq))


class Channel:
    readyState = "open"

    def __init__(self):
        self.sent = []

    def send(self, text):
        self.sent.append(json.loads(text))


class Triage:
    def __init__(self):
        self.inputs = []

    def add_input(self, msg):
        self.inputs.append(msg)


def _room(rid="r1", tenant=None):
    track = SimpleNamespace(rung="256p", set_rung=lambda name: setattr(track, "rung", name))
    adapt = SimpleNamespace(set_mode=lambda mode: SimpleNamespace(name={"low": "128p-lean", "high": "384p"}.get(mode, "256p")))
    return Room(rid, FakeSession(), track, None, tenant=tenant, adapt=adapt, triage=Triage())


def _msg(kind, seq=1, **fields):
    return protocol.encode(kind, seq=seq, **fields)


# -- registry ---------------------------------------------------------------------------------------
def test_registry_reserves_ids_and_slots_before_rooms_exist():
    cfg = replace(SessionConfig(), max_sessions=2)
    reg = RoomRegistry(cfg, CostControls(cfg))
    assert reg.reserve("a", None) == "a"
    with pytest.raises(OfferError) as exc:  # reserved but not live yet: still taken
        reg.reserve("a", None)
    assert (exc.value.status, exc.value.code) == (409, "room_taken")
    rid = reg.reserve(None, None)
    assert len(rid) >= 20 and rid != "a"  # server-chosen: random, unguessable
    with pytest.raises(OfferError) as exc:  # two reserved = max_sessions
        reg.reserve("b", None)
    assert (exc.value.status, exc.value.code) == (503, "server_full")
    reg.release(rid)
    a = _room("a")
    reg.add(a)
    reg.release("a")
    assert reg.get("a") is a and len(reg) == 1
    with pytest.raises(OfferError):
        reg.reserve("a", None)  # live: taken
    assert reg.remove(_room("a")) is False  # another room under the same id is not removed
    assert reg.remove(a) is True and reg.get("a") is None and reg.reserve("a", None) == "a"


def test_registry_applies_the_tenant_cap():
    cfg = replace(SessionConfig(), max_sessions_per_tenant=1)
    reg = RoomRegistry(cfg, CostControls(cfg))
    reg.add(_room("a", tenant="acme"))
    with pytest.raises(OfferError) as exc:
        reg.reserve("b", "acme")
    assert (exc.value.status, exc.value.code) == (503, "tenant_full")
    assert reg.reserve("b", "other") == "b"


# -- ctl ---------------------------------------------------------------------------------------------
def test_keys_and_prompts_reach_the_session_with_their_seq_and_are_recorded():
    room, ch = _room(), Channel()
    ctl = Ctl(SessionConfig())
    ctl.receive(room, ch, _msg("action", seq=3, keys=["right"], t=1.0), viewer=False)
    ctl.receive(room, ch, _msg("prompt", seq=4, text="a snowy day"), viewer=False)
    assert room.session.inputs == [("action", ("right",), 3), ("prompt", "a snowy day", 4)]
    assert [m["frame_id"] for m in room.triage.inputs] == [7, 7]
    assert room.triage.inputs[0]["keys"] == ["right"] and ch.sent == []


def test_ping_quality_and_reports():
    room, ch = _room(), Channel()
    room.channels.add(ch)
    room.player_channels.add(ch)
    ctl = Ctl(SessionConfig())
    ctl.receive(room, ch, _msg("ping", seq=9, t=12.5), viewer=False)
    assert ch.sent == [{"v": 1, "seq": 9, "type": "pong", "t": 12.5}]
    ctl.receive(room, ch, _msg("quality", preset="low"), viewer=False)
    assert room.quality == "low" and room.track.rung == "128p-lean"
    ctl.receive(room, ch, _msg("report", g2g_ms=21.5), viewer=False)
    assert room.page_report()["g2g_ms"] == 21.5
    stranger = Channel()  # a channel of a peer already dropped: its report must not be kept
    ctl.receive(room, stranger, _msg("report", g2g_ms=99.0), viewer=True)
    assert stranger not in room.reports and room.page_report()["g2g_ms"] == 21.5


def test_refusals_are_error_messages_never_exceptions():
    room, ch = _room(), Channel()
    flagged = []
    ctl = Ctl(SessionConfig(), on_flag=lambda r, why: flagged.append(why))
    ctl.receive(room, ch, "{not json", viewer=False)
    ctl.receive(room, ch, _msg("action", keys=["left"], t=0), viewer=True)  # a spectator cannot steer
    ctl.receive(room, ch, b"\xff\xfe", viewer=False)
    codes = [m["code"] for m in ch.sent]
    assert codes[0] == "bad_json" and codes[1] == "forbidden" and len(codes) == 3
    assert room.session.inputs == [] and flagged == []


def test_a_flood_is_rate_limited_and_flagged_once_per_run():
    cfg = replace(SessionConfig(), ctl_rate_limits=(("action", 1.0, 2), ("prompt", 1.0, 5), ("ping", 10.0, 20),
                                                     ("report", 2.0, 5), ("quality", 1.0, 5)), rate_flag_every=100)
    room, ch = _room(), Channel()
    flagged = []
    ctl = Ctl(cfg, on_flag=lambda r, why: flagged.append(why))
    for i in range(5):
        ctl.receive(room, ch, _msg("action", seq=i + 1, keys=["up"], t=0), viewer=False)
    assert len(room.session.inputs) == 2  # the burst
    assert [m["code"] for m in ch.sent] == ["rate_limited"] * 3 and room.rate_drops == 3
    assert flagged == ["flag: action rate"]  # the 1st drop of every 100 is flagged (seals the triage buffer)


def test_a_failing_handler_answers_internal_and_does_not_raise():
    room, ch = _room(), Channel()

    def broken(keys, seq):
        raise RuntimeError("boom")

    room.session.set_action = broken
    Ctl(SessionConfig()).receive(room, ch, _msg("action", keys=["up"], t=0), viewer=False)
    assert ch.sent[-1]["type"] == "error" and ch.sent[-1]["code"] == "internal"


def test_the_widget_path_applies_without_a_channel():
    """Ctl.apply with no channel (the widget's comm): steering works; ping and report have nowhere to go."""
    room = _room()
    ctl = Ctl(SessionConfig())
    ctl.apply(room, protocol.parse(_msg("action", seq=5, keys=["down"], t=0)))
    ctl.apply(room, protocol.parse(_msg("ping", seq=6, t=1.0)))
    ctl.apply(room, protocol.parse(_msg("report", seq=7, g2g_ms=5.0)))
    assert room.session.inputs == [("action", ("down",), 5)] and room.reports == {}
