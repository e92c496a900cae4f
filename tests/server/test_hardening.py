"""HTTP side of issue 12's defects, each written to fail on the code before the fix: deep-nesting bodies,
offers arriving in several TCP writes, slow bodies, admission limits as JSON 503s, mutated SDP, the Server
header, the access log, room names in /metrics, and the ICE bind address."""

import asyncio
import contextlib
import json
import logging
import re
from unittest import mock

import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from worldlab.config import SessionConfig
from worldlab.engine.oracle import EnvOracle
from worldlab.server import build_app
from worldlab.server.app import HUB, AccessLogger, metrics
from worldlab.transport.client import local_peer_connection

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def serving(config=None, **kw):
    app = build_app(EnvOracle(), config=config, **kw)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log_class=AccessLogger)  # as `worldlab serve` runs it
    async with TestClient(server) as c:
        yield c
    assert not app[HUB].rooms and not app[HUB].pcs  # shutdown closed everything


@contextlib.asynccontextmanager
async def client_offer():
    pc = local_peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("ctl")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        yield pc.localDescription.sdp
    finally:
        await pc.close()


async def post(client, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    r = await client.post("/offer", data=data, headers={"Content-Type": "application/json", **(headers or {})})
    return r.status, await r.json(), r.headers


async def raw_request(port, pieces, delay_s):
    """Send an HTTP request in several TCP writes `delay_s` apart; return (status, json body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(delay_s)
            writer.write(piece)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body), head.decode("latin-1")


def http_post(path, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


# -- defect 1 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"[" * 60000, b"[" * 2000 + b"]" * 2000,
                                  b'{"sdp": ' + b"[" * 40 + b"]" * 40 + b"}"])
async def test_deeply_nested_offer_body_is_400_json(body):
    async with serving() as c:
        status, got, _ = await post(c, body)
        assert (status, got["error"]["code"]) == (400, "bad_json")
        assert "Traceback" not in got["error"]["message"]
        assert (await c.get("/healthz")).status == 200


# -- defect 2 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("delay_s", [0.005, 0.05])
async def test_an_offer_arriving_in_two_tcp_writes_is_accepted(delay_s):
    async with serving() as c, client_offer() as sdp:
        body = json.dumps({"sdp": sdp, "type": "offer"}).encode()
        assert len(body) > 1000
        req = http_post("/offer", body)
        cut = len(req) - len(body) // 2  # headers and half the body, then the rest
        status, got, _ = await raw_request(c.server.port, [req[:cut], req[cut:]], delay_s)
        assert status == 200 and got["type"] == "answer", got


async def test_a_body_that_never_completes_times_out_as_json():
    async with serving(SessionConfig(offer_read_timeout_s=0.3)) as c:
        req = http_post("/offer", b'{"sdp": "v=0", "type": "offer"}')
        status, got, _ = await raw_request(c.server.port, [req[:-5]], 0)  # 5 bytes short, then silence
        assert (status, got["error"]["code"]) == (408, "timeout")


# -- defect 4 ---------------------------------------------------------------------------------------------
async def test_admission_limits_are_json_503s():
    async with serving(SessionConfig(max_sessions=1, max_viewers_per_room=1)) as c, client_offer() as sdp:
        status, first, _ = await post(c, {"sdp": sdp, "type": "offer"})
        assert status == 200
        status, got, headers = await post(c, {"sdp": sdp, "type": "offer"})
        assert (status, got["error"]["code"]) == (503, "server_full") and headers["Retry-After"]
        room = first["room"]
        assert (await post(c, {"sdp": sdp, "type": "offer", "room": room, "role": "viewer"}))[0] == 200
        status, got, _ = await post(c, {"sdp": sdp, "type": "offer", "room": room, "role": "viewer"})
        assert (status, got["error"]["code"]) == (503, "room_full")


# -- defect 6 ---------------------------------------------------------------------------------------------
async def test_mutated_sdp_is_400_with_a_generic_message():
    async with serving() as c, client_offer() as sdp:
        no_app = "\r\n".join(ln for ln in sdp.split("\r\n") if not ln.startswith("m=application"))
        for bad in (sdp.replace("a=mid:0\r\n", "a=mi\r\n"), no_app,  # AttributeError in pc.close() before
                    "v=0\r\nthis is not sdp", sdp.replace("a=setup:actpass", "a=setup:bogus"), sdp[: len(sdp) // 2]):
            status, got, _ = await post(c, {"sdp": bad, "type": "offer"})
            assert (status, got["error"]["code"]) == (400, "bad_sdp"), got
            assert got["error"]["message"] == "could not negotiate the offer: malformed or unsupported SDP"


async def test_no_server_version_and_hardening_headers():
    async with serving() as c:
        for path in ("/", "/healthz", "/nope", "/static/player.js"):
            r = await c.get(path)
            assert r.headers["Server"] == "worldlab", (path, r.headers["Server"])
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        writer.write(b"GARBAGE / HTTP/9.9\r\n\r\n")  # rejected by the HTTP parser, below the app
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
        assert head.startswith("HTTP/1.") and head.split()[1].startswith("4") and re.search(r"^Server: worldlab$", head, re.M | re.I), head
        assert "aiohttp" not in head.lower() and "python/" not in head.lower(), head


async def test_access_log_has_path_and_status_but_no_query_or_body():
    lines = []

    class Grab(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("aiohttp.access")
    handler, level = Grab(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with serving() as c:
            await c.get("/watch/room-1?token=s3cret-token")
            await post(c, {"sdp": "v=0\r\nsecret-body", "type": "offer"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any('"GET /watch/room-1" 200' in ln for ln in lines), lines
    assert any('"POST /offer" 400' in ln for ln in lines), lines
    assert not any("s3cret" in ln or "secret-body" in ln for ln in lines)


async def test_metrics_name_rooms_only_for_a_loopback_scrape():
    async with serving() as c:
        app = c.server.app
        await app[HUB].create_room("a walk in the forest", room="secret-room")
        loopback = await (await c.get("/metrics")).text()
        assert 'room="secret-room"' in loopback
        proxied = await (await c.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"})).text()
        assert "secret-room" not in proxied and "room=" not in proxied and "worldlab_rooms 1.0" in proxied
        assert re.search(r"^worldlab_fps_target 30\.0$", proxied, re.M), proxied
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda key, default=None: (
            ("203.0.113.7", 40000) if key == "peername" else default)
        remote = make_mocked_request("GET", "/metrics", app=app, transport=transport)
        assert remote.remote == "203.0.113.7"
        text = (await metrics(remote)).body.decode()
        assert "secret-room" not in text and "worldlab_rooms 1.0" in text


async def test_http_answers_use_random_room_ids_and_the_http_host_for_ice():
    async with serving(host="127.0.0.1") as c, client_offer() as sdp:
        status, ans, _ = await post(c, {"sdp": sdp, "type": "offer"})
        assert status == 200 and re.fullmatch(r"[A-Za-z0-9_-]{22}", ans["room"]), ans["room"]
        cands = [ln for ln in ans["sdp"].split("\r\n") if ln.startswith("a=candidate")]
        assert cands and all(ln.split()[4] == "127.0.0.1" for ln in cands), cands
        assert f"a=max-message-size:{SessionConfig.sctp_max_message_bytes}" in ans["sdp"]
