"""Limits tightened in `serve --config` (or a Player's config) hold on every path that parses client input:
the ctl handler, the WebRTC data channel, the WebSocket room, the widget's comm and its kernel endpoint (issue 25)."""

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from tests.transport.test_rooms_ctl import Channel, _room
from worldlab.config import SessionConfig
from worldlab.engine import Scheduler
from worldlab.engine.oracle import EnvOracle
from worldlab.server import build_app
from worldlab.transport.client import PeerClient
from worldlab.transport.ctl import Ctl
from worldlab.transport.peer import PeerHub
from worldlab.widget import registry

pytestmark = pytest.mark.timeout(120)

MAX_BYTES, MAX_DEPTH, MAX_OFFER = 512, 4, 1024  # all far below SessionConfig's defaults


@pytest.fixture
def tight(tmp_path) -> SessionConfig:
    """The limits as an operator sets them: a `--config` file, loaded as `worldlab serve` loads it."""
    path = tmp_path / "limits.yaml"
    path.write_text(f"max_message_bytes: {MAX_BYTES}\nmax_json_depth: {MAX_DEPTH}\nmax_offer_bytes: {MAX_OFFER}\n"
                    "offer_burst: 10\n")
    cfg = SessionConfig.from_file(path)
    assert (cfg.max_message_bytes, cfg.max_json_depth, cfg.max_offer_bytes) == (MAX_BYTES, MAX_DEPTH, MAX_OFFER)
    return cfg


def ping(size: int, seq: int = 1) -> str:
    """A valid ping of exactly `size` UTF-8 bytes (padded with a field a ping ignores)."""
    head = json.dumps({"v": 1, "seq": seq, "type": "ping", "t": seq, "pad": ""}, separators=(",", ":"))
    return head[:-2] + "x" * (size - len(head)) + '"}'


def deep_ping(depth: int, seq: int = 1) -> str:
    """A valid ping whose JSON nests exactly `depth` levels (the object itself is one)."""
    return f'{{"v":1,"seq":{seq},"type":"ping","t":{seq},"x":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def errors(sent) -> list[str]:
    return [m["code"] for m in sent if m["type"] == "error"]


# -- the one ctl handler ------------------------------------------------------------------------------
def test_ctl_refuses_a_message_just_over_the_configured_size(tight):
    ctl, room, ch = Ctl(tight), _room(), Channel()
    assert len(ping(MAX_BYTES + 1).encode()) == MAX_BYTES + 1
    ctl.receive(room, ch, ping(MAX_BYTES + 1, seq=1), viewer=False)
    assert errors(ch.sent) == ["too_large"]
    assert f"the limit is {MAX_BYTES}" in ch.sent[-1]["message"]
    ctl.receive(room, ch, ping(MAX_BYTES, seq=2), viewer=False)  # exactly at the limit: accepted
    assert ch.sent[-1] == {"v": 1, "type": "pong", "seq": 2, "t": 2.0} and errors(ch.sent) == ["too_large"]


def test_ctl_refuses_json_just_deeper_than_configured(tight):
    ctl, room, ch = Ctl(tight), _room(), Channel()
    ctl.receive(room, ch, deep_ping(MAX_DEPTH + 1, seq=1), viewer=False)
    assert errors(ch.sent) == ["bad_json"]
    assert f"deeper than {MAX_DEPTH} levels" in ch.sent[-1]["message"]
    ctl.receive(room, ch, deep_ping(MAX_DEPTH, seq=2), viewer=False)
    assert ch.sent[-1]["type"] == "pong" and errors(ch.sent) == ["bad_json"]


def test_ctl_can_also_loosen_a_limit(tight):
    ctl, ch = Ctl(replace(tight, max_message_bytes=8192)), Channel()
    ctl.receive(_room(), ch, ping(SessionConfig.max_message_bytes + 100), viewer=False)
    assert ch.sent[-1]["type"] == "pong"


# -- the same limits end to end: WebRTC data channel, WebSocket room ------------------------------------
async def test_data_channel_honours_the_config(tight):
    model = EnvOracle(seed=4)
    sched = Scheduler(model, config=tight).start()
    hub = PeerHub(model, sched, fps=30.0, config=tight)
    client = PeerClient()
    try:
        await client.connect(hub, prompt="a sunny desert")
        await client.wait_for(lambda: len(client.frames) >= 5)
        client.ch.send(ping(1000, seq=1))
        client.ch.send(deep_ping(MAX_DEPTH + 1, seq=2))
        client.ch.send(ping(MAX_BYTES, seq=3))
        await client.wait_for(lambda: any(m["type"] == "pong" and m["seq"] == 3 for m in client.msgs))
        assert errors(client.msgs) == ["too_large", "bad_json"]
        n = len(client.frames)
        await client.wait_for(lambda: len(client.frames) >= n + 5)  # the stream keeps running
    finally:
        await client.pc.close()
        await hub.close()
        sched.stop()


async def _next_text(ws, kind):
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg
            if msg.type == WSMsgType.TEXT and json.loads(msg.data)["type"] == kind:
                return json.loads(msg.data)


async def test_websocket_room_honours_the_config(tight):
    async with TestClient(TestServer(build_app(EnvOracle(), config=tight), host="127.0.0.1")) as c:
        ws = await c.ws_connect("/ws?prompt=a+snowy+hill")
        await ws.send_str(ping(1000, seq=1))
        assert (await _next_text(ws, "error"))["code"] == "too_large"
        await ws.send_str(deep_ping(MAX_DEPTH + 1, seq=2))
        assert (await _next_text(ws, "error"))["code"] == "bad_json"
        await ws.send_str(ping(MAX_BYTES, seq=3))
        assert (await _next_text(ws, "pong"))["seq"] == 3
        await _next_text(ws, "stats")  # the room is still live
        await ws.close()


# -- the widget: its comm ctl and its kernel endpoint -----------------------------------------------------
@pytest.fixture
def player(tight, tmp_path, monkeypatch):
    from worldlab.widget import Player

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # never the user's runtime dir
    p = Player(EnvOracle(seed=1), prompt="a walk in the forest", config=tight)
    try:
        yield p
    finally:
        p.close()


def post(p, action: str, raw: bytes):
    """(status, error code or None) of a POST to the player's kernel endpoint, as the relay sends it."""
    req = urllib.request.Request(f"http://127.0.0.1:{p.endpoint.port}/players/{p.player_id}/{action}", data=raw,
                                 method="POST", headers={registry.SECRET_HEADER: p.endpoint.secret,
                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]["code"]


def test_widget_endpoint_refuses_an_offer_over_the_configured_size(player):
    assert player.hub.cfg.max_offer_bytes == MAX_OFFER
    # The Jupyter server's relay checks a body against the Player's limit it finds in the announcement.
    assert registry.lookup(player.player_id)[0]["max_offer_bytes"] == MAX_OFFER
    over = json.dumps({"type": "offer", "sdp": "v=0" + "x" * MAX_OFFER}).encode()
    assert post(player, "offer", over) == (413, "too_large")
    under = json.dumps({"type": "offer", "sdp": "nope"}).encode()  # within the limit: it reaches SDP checks
    assert post(player, "offer", under) == (400, "bad_sdp")
    deep = b'{"type": "offer", "sdp": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
    assert post(player, "offer", deep) == (400, "bad_json")
    assert post(player, "toggle", json.dumps({"window": "x" * MAX_OFFER}).encode()) == (413, "too_large")
    assert player.views == 0 and not player.hub.pcs and player.status == "live"


def test_widget_comm_ctl_honours_the_config(player):
    sent = []
    player.send = lambda content, buffers=None: sent.append(content)
    player._on_msg(player, {"type": "ctl", "msg": {"type": "ping", "t": 1, "pad": "x" * 1000}}, [])
    player._on_msg(player, {"type": "ctl", "msg": {"type": "ping", "t": 1, "x": [[[[[]]]]]}}, [])
    assert [c["code"] for c in sent] == ["too_large", "bad_json"]
