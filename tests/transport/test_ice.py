"""ICE configuration: coturn REST-API credentials against a vector computed with openssl, the page's ICE
config from SessionConfig, bad `ice_servers` entries refused in one line, relay_pct from nominated pairs,
and GET /ice with and without access tokens."""

import contextlib
import time
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from worldlab.config import SessionConfig
from worldlab.engine.oracle import EnvOracle
from worldlab.security.tokens import Keyring
from worldlab.server import build_app
from worldlab.transport import ice

TURN = {"urls": "turn:turn.example.org:3478?transport=udp"}


def test_turn_credentials_match_coturns_rest_scheme():
    # echo -n "1700003600:forest" | openssl dgst -sha1 -hmac s3cret -binary | base64
    got = ice.turn_credentials("s3cret", "forest", ttl_s=3600, now=1_700_000_000)
    assert got == {"username": "1700003600:forest", "credential": "mz1xnRmfzEEmvGurpha0EIcB7Ys="}


def test_page_config_mints_credentials_only_for_turn_entries_without_a_password():
    cfg = SessionConfig(ice_servers=({"urls": ["stun:stun.example.org"]}, TURN,
                                     {"urls": "turns:t2.example.org", "username": "u", "credential": "p"}),
                        turn_secret="s3cret", turn_credential_ttl_s=60, ice_transport_policy="relay")
    got = ice.page_ice_config(cfg, "room-1", now=1000)
    stun, turn, static = got["iceServers"]
    assert got["iceTransportPolicy"] == "relay"
    assert stun == {"urls": ["stun:stun.example.org"]}  # STUN needs no credentials
    assert turn == {**TURN, "urls": [TURN["urls"]], **ice.turn_credentials("s3cret", "room-1", 60, now=1000)}
    assert turn["username"] == "1060:room-1"
    assert static == {"urls": ["turns:t2.example.org"], "username": "u", "credential": "p"}
    assert ice.page_ice_config(SessionConfig()) == {"iceServers": [], "iceTransportPolicy": "all"}


@pytest.mark.parametrize("entry, message", [
    ("turn:x", "must be mappings"),
    ({"url": "turn:x"}, "unknown key"),
    ({"urls": []}, "needs 'urls'"),
    ({"urls": ["http://x"]}, "is not a stun:"),
    ({"urls": "turn:x", "username": 5}, "'username' must be a string"),
])
def test_bad_ice_server_entries_are_refused_in_one_line(entry, message):
    with pytest.raises(ValueError, match=message):
        SessionConfig.from_dict({"ice_servers": [entry]})


def test_relay_policy_needs_a_turn_server_that_can_authenticate():
    with pytest.raises(ValueError, match="ice_transport_policy must be one of"):
        SessionConfig(ice_transport_policy="none")
    for cfg in (SessionConfig(ice_transport_policy="relay"),
                SessionConfig(ice_transport_policy="relay", ice_servers=(TURN,)),  # no secret, no password
                SessionConfig(ice_transport_policy="relay", ice_servers=({"urls": "stun:s"},), turn_secret="k")):
        with pytest.raises(ValueError, match="needs a TURN server"):
            ice.check_relay_config(cfg)
    ice.check_relay_config(SessionConfig(ice_transport_policy="relay", ice_servers=(TURN,), turn_secret="k"))


def fake_pc(local, remote):
    pair = None if local is None else SimpleNamespace(local_candidate=SimpleNamespace(type=local),
                                                       remote_candidate=SimpleNamespace(type=remote))
    conn = SimpleNamespace(_nominated={1: pair} if pair else {})
    return SimpleNamespace(sctp=SimpleNamespace(transport=SimpleNamespace(transport=SimpleNamespace(_connection=conn))))


def test_relay_pct_counts_connected_peers_with_a_relay_candidate_on_either_end():
    pcs = [fake_pc("host", "relay"), fake_pc("relay", "host"), fake_pc("host", "srflx"), fake_pc(None, None)]
    assert [ice.route(pc) for pc in pcs] == ["relay", "relay", "direct", None]
    assert ice.relay_pct(pcs) == pytest.approx(200 / 3)  # the unconnected peer is not counted
    assert ice.relay_pct([]) == 0.0 and ice.relay_pct([object()]) == 0.0


@contextlib.asynccontextmanager
async def serving(**kw):
    app = build_app(EnvOracle(), **kw)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def get(c, query=""):
    r = await c.get("/ice" + query)
    return r.status, await r.json()


async def test_ice_route_open_and_token_gated(tmp_path):
    cfg = SessionConfig(ice_servers=(TURN,), turn_secret="s3cret")
    async with serving(config=cfg) as c:
        status, got = await get(c, "?room=r1")
        assert status == 200 and got["iceServers"][0]["username"].endswith(":r1")
        assert int(got["iceServers"][0]["username"].split(":")[0]) > time.time() + 3000
        assert (await get(c, "?room=no%20spaces"))[1]["error"]["code"] == "bad_room"
        assert (await get(c, "?role=admin"))[1]["error"]["code"] == "bad_field"
    ring = Keyring.create(tmp_path / "keys.json")
    async with serving(config=cfg, keyring=ring) as c:
        assert (await get(c))[0] == 401
        assert (await get(c, "?room=r1&token=forged"))[0] == 401
        assert (await get(c, f"?token={ring.issue('r1', 'player', ttl_s=60)}"))[1]["error"]["code"] == "room_required"
        other = ring.issue("r2", "player", ttl_s=60)
        assert (await get(c, f"?room=r1&token={other}"))[1]["error"]["code"] == "wrong_room"
        status, got = await get(c, f"?room=r1&token={ring.issue('r1', 'player', ttl_s=60)}")
        assert status == 200 and got["iceServers"][0]["username"].endswith(".r1")
