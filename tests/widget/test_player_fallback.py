"""The widget's fallback on the served page's WebCodecs path, kernel side: after a view asks for it, H.264 access
units (websocket framing) go out as comm buffers and decode back, and the view's ctl text gets the hub's acks
and errors; the JPEG fallback stays for a browser without WebCodecs."""

import json
import threading
import time

import av
import pytest

from worldlab.engine.oracle import EnvOracle
from worldlab.transport.websocket import unpack_au
from worldlab.widget import Player

pytestmark = pytest.mark.timeout(120)


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def player():
    p = Player(EnvOracle(seed=2), prompt="a snowy field", fps=30)
    sent, lock = [], threading.Lock()

    def send(content, buffers=None):  # what the comm would carry to the view (called from the media thread)
        with lock:
            sent.append((content, buffers))

    p.send = send
    try:
        yield p, sent
    finally:
        p.close()


def ctl(sent, kind):
    texts = [json.loads(c["text"]) for c, _ in list(sent) if c["type"] == "ctl"]
    return [m for m in texts if m["type"] == kind]


def test_fallback_sends_access_units_and_takes_ctl_text(player):
    p, sent = player
    p._on_msg(p, {"type": "fallback", "codec": "h264", "reason": "no WebRTC frames"}, [])
    wait_for(lambda: sum(c["type"] == "au" for c, _ in list(sent)) >= 30)
    units = [unpack_au(bytes(b[0])) for c, b in list(sent) if c["type"] == "au"]
    assert units[0][2] and not any(c["type"] == "jpeg" for c, _ in list(sent))  # starts on a keyframe
    dec = av.CodecContext.create("h264", "r")
    frames = [f for _, _, _, au in units for f in dec.decode(av.Packet(au))]
    assert len(frames) >= len(units) - 1 and frames[-1].width == frames[-1].height >= 128
    action = {"v": 1, "seq": 1, "type": "action", "keys": ["right"], "t": 0}
    p._on_msg(p, {"type": "ctl_text", "text": json.dumps(action)}, [])
    wait_for(lambda: any(m["seq"] == 1 for m in ctl(sent, "ack")))
    p._on_msg(p, {"type": "ctl_text", "text": "{oops"}, [])
    wait_for(lambda: any(m["code"] == "bad_json" for m in ctl(sent, "error")))
    assert p.mode == "fallback" and p.status == "live"


def test_the_failed_peer_going_does_not_close_a_live_fallback_view(player, monkeypatch):
    import worldlab.widget.player as widget_player

    monkeypatch.setattr(widget_player, "LAST_VIEW_GRACE_S", 0.1)
    p, sent = player
    p.views = 1  # the view's offer, whose peer never connected
    p._on_msg(p, {"type": "fallback", "codec": "h264"}, [])
    p._on_msg(p, {"type": "frontend_stats", "stats": {"fallback": True, "frames": 10}}, [])
    p._players_gone()  # the hub dropped that peer (connect_timeout_s after its answer)
    time.sleep(0.5)
    assert p.status == "live" and p.views == 1
    p._frontend_at -= 60  # then the view's comm heartbeat stops: it is gone
    p._players_gone()
    wait_for(lambda: p.status == "closed")


def test_fallback_without_webcodecs_is_jpeg(player):
    p, sent = player
    p._on_msg(p, {"type": "fallback", "reason": "no WebRTC frames"}, [])
    wait_for(lambda: any(c["type"] == "jpeg" for c, _ in list(sent)))
    assert not any(c["type"] == "au" for c, _ in list(sent))


def test_comm_ctl_goes_through_the_hubs_one_handler(player):
    """The JPEG view's keys and prompts (`ctl` over the comm) take the same path as a data channel's: numbered
    after the session's newest input, recorded by the observers' input hook; bad ones answered on the comm."""
    p, sent = player
    s = p.room.session
    seen = []
    p.hub.ctl.observers = (type("Spy", (), {"session_input": lambda self, *a: seen.append(a[1:3])})(),)
    before = s._seq
    p._on_msg(p, {"type": "ctl", "msg": {"type": "action", "keys": ["left"], "t": 0}}, [])
    wait_for(lambda: s._keys == ("left",))
    p._on_msg(p, {"type": "ctl", "msg": {"type": "prompt", "text": "a night in the city"}}, [])
    wait_for(lambda: s.prompt == "a night in the city")
    assert seen == [("action", before + 1), ("prompt", before + 2)]
    p._on_msg(p, {"type": "ctl", "msg": {"type": "action", "keys": ["sideways"]}}, [])
    assert any(c.get("type") == "error" and c.get("code") == "bad_field" for c, _ in list(sent))
