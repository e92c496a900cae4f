"""Token-gated rooms over HTTP: missing, forged, expired, wrong-room, wrong-role and other-tenant tokens get
401/403 JSON; a valid token gets past auth; /healthz and /metrics details need an admin token (or a
loopback scrape); Host/Origin allow-list; the per-IP /offer rate limit; without a keyring nothing changes."""

import contextlib
import json
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from worldlab.config import SessionConfig
from worldlab.engine.oracle import EnvOracle
from worldlab.security.tokens import Keyring
from worldlab.server import build_app
from worldlab.server.app import HUB
from worldlab.transport.client import local_peer_connection

pytestmark = pytest.mark.timeout(120)
BAD_SDP = "v=0\r\nthis is not sdp"  # gets past every check before negotiation, then 400 bad_sdp
REMOTE = {"X-Forwarded-For": "203.0.113.7"}  # a proxied client: never a trusted loopback scrape


@pytest.fixture
def ring(tmp_path):
    return Keyring.create(tmp_path / "keys.json")


@contextlib.asynccontextmanager
async def serving(keyring=None, config=None, **kw):
    app = build_app(EnvOracle(), keyring=keyring, config=config, **kw)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def post(client, body, headers=None):
    r = await client.post("/offer", data=json.dumps(body), headers={"Content-Type": "application/json",
                                                                     **(headers or {})})
    return r.status, await r.json(), r.headers


def offer(token=None, room="room-1", sdp=BAD_SDP, **kw):
    body = {"sdp": sdp, "type": "offer", **kw}
    body.update({k: v for k, v in (("token", token), ("room", room)) if v is not None})
    return body


async def code_of(client, body, headers=None):
    status, got, _ = await post(client, body, headers)
    return status, got["error"]["code"] if "error" in got else got


async def test_offer_refuses_missing_forged_expired_wrong_room_and_wrong_role(ring, tmp_path):
    forged = Keyring.create(tmp_path / "other.json").issue("room-1", "player", ttl_s=60)
    expired = ring.issue("room-1", "player", ttl_s=10, now=time.time() - 60)
    viewer = ring.issue("room-1", "viewer", ttl_s=60)
    async with serving(ring) as c:
        assert await code_of(c, offer()) == (401, "token_required")
        assert await code_of(c, offer(room=None)) == (401, "token_required")
        assert await code_of(c, offer(forged)) == (401, "bad_token")
        assert await code_of(c, offer("not-a-token")) == (401, "bad_token")
        assert await code_of(c, offer(expired)) == (401, "token_expired")
        assert await code_of(c, offer(viewer)) == (403, "wrong_role")  # a viewer cannot create a room
        assert await code_of(c, offer(ring.issue("room-2", "player", ttl_s=60))) == (403, "wrong_room")
        assert await code_of(c, offer(ring.issue(None, "admin", ttl_s=60))) == (403, "wrong_role")
        status, got, headers = await post(c, offer())
        assert headers["WWW-Authenticate"] == "Bearer" and "Traceback" not in got["error"]["message"]
        assert not c.server.app[HUB].rooms


async def test_a_valid_player_token_gets_past_auth_and_names_the_room(ring):
    token = ring.issue("room-1", "player", ttl_s=60)
    async with serving(ring) as c:
        assert await code_of(c, offer(token)) == (400, "bad_sdp")  # auth passed; negotiation refused
        assert await code_of(c, offer(token, room=None)) == (400, "room_required")
        pc = local_peer_connection()
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("ctl")
        await pc.setLocalDescription(await pc.createOffer())
        try:
            status, ans, _ = await post(c, offer(ring.issue("room-1", "player", tenant="acme", ttl_s=60),
                                                 sdp=pc.localDescription.sdp))
            assert status == 200 and ans["room"] == "room-1" and ans["type"] == "answer", ans
            assert c.server.app[HUB].rooms["room-1"].tenant == "acme"
        finally:
            await pc.close()


async def test_viewers_need_a_token_for_the_room_and_its_tenant(ring):
    async with serving(ring) as c:
        await c.server.app[HUB].create_room(room="room-1", tenant="acme")
        for role in ("viewer", "player"):  # a player token may watch its own room
            token = ring.issue("room-1", role, tenant="acme", ttl_s=60)
            assert await code_of(c, offer(token, role="viewer")) == (400, "bad_sdp")
        other = ring.issue("room-1", "viewer", tenant="globex", ttl_s=60)
        assert await code_of(c, offer(other, role="viewer")) == (403, "wrong_tenant")
        assert await code_of(c, offer(ring.issue("room-2", "viewer", ttl_s=60), role="viewer")) == (403, "wrong_room")
        assert await code_of(c, offer(role="viewer")) == (401, "token_required")
        # the room's player slot is taken: a second player token for it does not get a second player
        assert await code_of(c, offer(ring.issue("room-1", "player", tenant="acme", ttl_s=60))) == (409, "room_taken")


async def test_health_and_metrics_details_only_for_admin_or_loopback(ring):
    admin = {"Authorization": "Bearer " + ring.issue(None, "admin", ttl_s=60), **REMOTE}
    async with serving(ring) as c:
        await c.server.app[HUB].create_room(room="secret-room", tenant="acme")
        r = await c.get("/healthz", headers=REMOTE)
        assert r.status == 200 and await r.json() == {"ok": True}
        body = await (await c.get("/healthz", headers=admin)).json()
        assert body["rooms"] == 1 and body["model"]["model"] == "oracle" and "peers" in body
        assert "rooms" in await (await c.get("/healthz")).json()  # a loopback scrape
        assert "secret-room" not in await (await c.get("/metrics", headers=REMOTE)).text()
        assert 'room="secret-room"' in await (await c.get("/metrics", headers=admin)).text()
        player = ring.issue("secret-room", "player", ttl_s=60)
        for path in ("/healthz", "/metrics"):
            r = await c.get(path, headers={"Authorization": "Bearer " + player, **REMOTE})
            assert (r.status, (await r.json())["error"]["code"]) == (403, "wrong_role")
            r = await c.get(path, headers={"Authorization": "Bearer forged.token", **REMOTE})
            assert (r.status, (await r.json())["error"]["code"]) == (401, "bad_token")


async def test_host_and_origin_outside_the_allow_list_are_403(ring):
    async with serving(ring, allowed_hosts=["127.0.0.1", "demo.example.org:8080"]) as c:
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/", headers={"Host": "demo.example.org"})).status == 200
        for headers in ({"Host": "rebind.attacker.test"}, {"Host": "rebind.attacker.test:8080"},
                        {"Origin": "http://rebind.attacker.test"}, {"Origin": "null"}):
            for r in (await c.get("/", headers=headers), await c.post("/offer", data="{}", headers=headers)):
                assert (r.status, (await r.json())["error"]["code"]) == (403, "bad_host"), headers
        good = {"Origin": f"http://127.0.0.1:{c.server.port}"}
        assert await code_of(c, offer(ring.issue("room-1", "player", ttl_s=60)), good) == (400, "bad_sdp")


async def test_offers_are_rate_limited_per_ip_with_retry_after(ring):
    cfg = SessionConfig(offer_rate_per_s=0.5, offer_burst=3)
    async with serving(ring, config=cfg) as c:
        codes = [(await code_of(c, offer()))[0] for _ in range(cfg.offer_burst)]
        assert codes == [401] * cfg.offer_burst  # refused offers spend tokens too
        status, got, headers = await post(c, offer())
        assert (status, got["error"]["code"]) == (429, "rate_limited") and headers["Retry-After"] == "2"
        assert (await c.get("/healthz")).status == 200  # only POST /offer is limited


async def test_without_a_keyring_nothing_changes():
    async with serving() as c:
        assert await code_of(c, offer(room=None)) == (400, "bad_sdp")
        assert await code_of(c, offer("garbage", room=None)) == (400, "bad_sdp")  # a token is ignored
        assert (await c.get("/", headers={"Host": "anything.test"})).status == 200  # no allow-list
        assert (await (await c.get("/healthz")).json())["rooms"] == 0
