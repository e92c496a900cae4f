"""HTTP surface: every bad offer gets a JSON 4xx naming the problem, never a trace; health and metrics."""

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from worldlab.engine.oracle import EnvOracle
from worldlab.server import build_app


@pytest.fixture
async def client():
    app = build_app(EnvOracle())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def post(client, body, content_type="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    r = await client.post("/offer", data=data, headers={"Content-Type": content_type})
    return r.status, await r.json()


@pytest.mark.parametrize("body, ctype, status, code", [
    ({"sdp": "v=0", "type": "offer"}, "text/plain", 415, "unsupported_media_type"),
    (b"{not json", "application/json", 400, "bad_json"),
    ([1, 2], "application/json", 400, "bad_json"),
    ({"type": "offer"}, "application/json", 400, "bad_field"),
    ({"sdp": 42, "type": "offer"}, "application/json", 400, "bad_field"),
    ({"sdp": "v=0\r\n", "type": "answer"}, "application/json", 400, "bad_field"),
    ({"sdp": "hello", "type": "offer"}, "application/json", 400, "bad_sdp"),
    ({"sdp": "v=0\r\n", "type": "offer", "room": "../etc"}, "application/json", 400, "bad_room"),
    ({"sdp": "v=0\r\n", "type": "offer", "role": "admin"}, "application/json", 400, "bad_field"),
    ({"sdp": "v=0\r\n", "type": "offer", "preset": "ultra"}, "application/json", 400, "bad_field"),
    ({"sdp": "v=0\r\n", "type": "offer", "codec": "theora"}, "application/json", 400, "bad_codec"),
    ({"sdp": "v=0\r\n", "type": "offer", "codec": ["av1"]}, "application/json", 400, "bad_codec"),
    ({"sdp": "v=0\r\n", "type": "offer", "prompt": "   "}, "application/json", 400, "bad_field"),
    ({"sdp": "v=0\r\n", "type": "offer", "room": "nobody", "role": "viewer"}, "application/json", 404, "unknown_room"),
    ({"sdp": "v=0\r\nthis is not sdp", "type": "offer"}, "application/json", 400, "bad_sdp"),
])
async def test_bad_offers_get_json_errors(client, body, ctype, status, code):
    got_status, got = await post(client, body, ctype)
    assert (got_status, got["error"]["code"]) == (status, code)
    assert "Traceback" not in got["error"]["message"]


async def test_oversized_offer_is_413(client):
    status, body = await post(client, {"sdp": "v=0" + "x" * 70_000, "type": "offer"})
    assert status == 413 and body["error"]["code"] == "too_large"


async def test_unknown_route_is_json_404(client):
    r = await client.get("/nope")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_health_and_metrics_and_pages(client):
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 200 and body["ok"] and body["rooms"] == 0 and body["model"]["model"] == "oracle"
    text = await (await client.get("/metrics")).text()
    assert "worldlab_rooms 0.0" in text
    for metric in ("fps_actual", "g2g_ms", "kv_bytes", "relay_pct"):
        assert f"# TYPE worldlab_{metric} gauge" in text
    assert "requestVideoFrameCallback" in await (await client.get("/static/player.js")).text()
    assert (await client.get("/watch/room-1")).status == 200
    assert (await client.get("/watch/a%20b")).status == 400
