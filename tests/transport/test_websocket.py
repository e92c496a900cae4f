"""The WebCodecs fallback's server half: H.264 access units framed for the socket decode back frame for frame with a
short GOP, and GET /ws streams them with the ctl protocol, refusing bad input (token, room, origin, ctl) cleanly."""

import asyncio
import json

import av
import numpy as np
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from worldlab.config import SessionConfig
from worldlab.engine.oracle import EnvOracle
from worldlab.security.tokens import Keyring
from worldlab.server import build_app
from worldlab.server.app import HUB
from worldlab.transport.encoder import RoomEncoder
from worldlab.transport.websocket import HEADER, FramingError, pack_au, unpack_au

pytestmark = pytest.mark.timeout(120)


def test_access_units_decode_back_with_a_short_gop():
    fps, n, kf_s = 30, 61, 0.5
    enc = RoomEncoder("h264", fps=fps, keyframe_interval_s=kf_s)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    msgs = []
    for i in range(n):
        frame = np.roll(base, 2 * i, axis=1)  # moving content: P frames carry real data
        packet = enc.encode(frame, pts=3000 * i, bitrate=500_000, force_keyframe=i == 40)
        msgs.append(pack_au(1000 + i, packet.pts, packet.is_keyframe, bytes(packet)))
    units = [unpack_au(m) for m in msgs]
    assert [u[0] for u in units] == list(range(1000, 1000 + n)) and units[7][1] == 21000
    # Annex B (start codes): what VideoDecoder takes when configured without a `description`
    assert all(u[3].startswith(b"\x00\x00\x00\x01") for u in units)
    keys = [i for i, u in enumerate(units) if u[2]]
    assert keys == [0, 15, 30, 40, 45, 60]  # every kf_s * fps frames, plus the one asked for
    dec = av.CodecContext.create("h264", "r")
    frames = []
    for fid, _pts, key, au in units:
        got = dec.decode(av.Packet(au))
        frames += [(f, key) for f in got]
    frames += [(f, None) for f in dec.decode(None)]
    assert len(frames) == n  # one picture per access unit, none held back (zerolatency: no reordering)
    assert all((f.width, f.height) == (128, 96) for f, _ in frames)
    assert all(f.key_frame for f, key in frames if key)


def test_framing_refuses_garbage():
    with pytest.raises(FramingError):
        unpack_au(b"\x01" * HEADER.size)
    with pytest.raises(FramingError):
        unpack_au(b"\x09" + b"\x00" * (HEADER.size + 3))


async def _client(keyring=None, burst=10):
    cfg = SessionConfig(offer_burst=burst)  # a socket counts against the per-IP offer rate limit
    return TestClient(TestServer(build_app(EnvOracle(), keyring=keyring, config=cfg), host="127.0.0.1"))


async def _next_text(ws, kind, timeout=10.0):
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg
            if msg.type == WSMsgType.TEXT and json.loads(msg.data)["type"] == kind:
                return json.loads(msg.data)


async def test_socket_streams_access_units_and_answers_ctl():
    async with await _client() as c:
        ws = await c.ws_connect("/ws?prompt=a+snowy+hill&preset=low")
        async with asyncio.timeout(10):
            first = await ws.receive()
            while first.type != WSMsgType.BINARY:
                first = await ws.receive()
        fid, _pts, key, au = unpack_au(first.data)
        assert key and au.startswith(b"\x00\x00\x00\x01")
        await ws.send_str(json.dumps({"v": 1, "seq": 1, "type": "action", "keys": ["right"], "t": 0}))
        ack = await _next_text(ws, "ack")
        assert ack["seq"] == 1 and ack["frame_id"] >= fid
        await ws.send_str("{not json")  # a malformed message: an error reply, the session goes on
        err = await _next_text(ws, "error")
        assert err["code"] == "bad_json"
        await ws.send_str(json.dumps({"v": 1, "seq": 2, "type": "ping", "t": 5}))
        assert (await _next_text(ws, "pong"))["t"] == 5
        await ws.send_str(json.dumps({"v": 1, "seq": 3, "type": "teleport"}))
        assert (await _next_text(ws, "error"))["code"] == "unknown_type"
        await ws.send_str("x" * 5000)
        assert (await _next_text(ws, "error"))["code"] == "too_large"
        stats = await _next_text(ws, "stats")
        assert stats["quality"] == "low" and stats["fps_target"] == 30
        hub = c.server.app[HUB]
        assert list(hub.rooms) == [stats["room"]] and hub.rooms[stats["room"]].socket
        await ws.close()
        for _ in range(50):
            if not hub.rooms:
                break
            await asyncio.sleep(0.05)
        assert not hub.rooms  # the room ended with its socket


async def _refused(c, url, headers=None):
    """(close code of the socket, HTTP status of the same GET without the upgrade, error code) of a refusal."""
    ws = await c.ws_connect(url, headers=headers)
    err = await _next_text(ws, "error")
    closing = await ws.receive()
    assert closing.type == WSMsgType.CLOSE and closing.data == 4000 + err["status"], closing
    r = await c.get(url, headers=headers)  # without the upgrade: the same error as JSON, like POST /offer's
    body = await r.json()
    assert "Traceback" not in json.dumps(body) and "Traceback" not in err["message"]
    want = 426 if r.status == 426 else err["status"]  # a plain GET stops at upgrade_required once the input is fine
    assert r.status == want and (r.status == 426 or body["error"]["code"] == err["code"])
    return closing.data - 4000, err["code"]


async def test_socket_route_refuses_bad_input(tmp_path):
    ring = Keyring.create(tmp_path / "keys.json")
    good = ring.issue("room-1", "player", ttl_s=60)
    async with await _client(ring, burst=40) as c:
        assert await _refused(c, "/ws?room=room-1") == (401, "token_required")
        assert await _refused(c, "/ws?room=room-1&token=forged") == (401, "bad_token")
        assert await _refused(c, f"/ws?room=room-2&token={good}") == (403, "wrong_room")
        assert await _refused(c, f"/ws?room=bad%20room&token={good}") == (400, "bad_room")
        assert await _refused(c, f"/ws?room=room-1&token={good}&preset=ultra") == (400, "bad_field")
        assert await _refused(c, f"/ws?room=room-1&token={good}",
                              {"Origin": "http://evil.example"}) == (403, "bad_origin")
        r = await c.get(f"/ws?room=room-1&token={good}")
        assert r.status == 426 and (await r.json())["error"]["code"] == "upgrade_required"
        ws = await c.ws_connect("/ws?room=room-1&token=" + good + "&prompt=" + "x" * 3000)
        assert (await _next_text(ws, "error"))["code"] == "bad_field"  # an oversized prompt
        ws = await c.ws_connect(f"/ws?room=room-1&token={good}")
        await _next_text(ws, "stats")
        assert await _refused(c, f"/ws?room=room-1&token={good}") == (409, "room_taken")
        await ws.close()
    async with await _client(burst=1) as c:
        await (await c.ws_connect("/ws")).close()
        assert await _refused(c, "/ws") == (429, "rate_limited")
