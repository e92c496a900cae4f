"""The kernel half of the relay without a Jupyter server: each Player announces itself in the runtime dir
(owner-only, this endpoint's port and secret), the endpoint on the media thread answers status, WebRTC
offers and toggles only with the secret and only for live players, and goes away with its last Player; a
kernel exit leaves a tombstone the relay reports once, and a dead kernel's stale file is recognised."""

import json
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
from aiortc import RTCSessionDescription

from tests.transport.test_inprocess import Client
from worldlab.engine.oracle import EnvOracle
from worldlab.model import load_model
from worldlab.widget import Player, registry
from worldlab.widget import player as player_mod

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    """Every test announces into its own runtime dir, never the user's."""
    rt = tmp_path / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(rt))
    return rt


def worker_threads():
    return [t for t in threading.enumerate() if t.name == "worldlab-model"]


def announcements(rt):
    return sorted(p.name for p in rt.glob(f"{registry.PREFIX}*.json")) if rt.exists() else []


def oracle_player(seed=1):
    return Player(EnvOracle(seed=seed), prompt="a walk in the forest")


def http(port, method, path, body=None, *, secret=None, raw=None, timeout=60):
    """(status, parsed JSON body) of a request to the endpoint; secret=None sends no secret header."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if secret is not None:
        req.add_header(registry.SECRET_HEADER, secret)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def port_open(port) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_announcement_lifecycle_and_endpoint_stops_with_last_player(runtime_dir):
    p = oracle_player()
    try:
        ep = p.endpoint
        port = ep.port
        assert isinstance(port, int) and port > 0 and port_open(port)
        assert announcements(runtime_dir) == [f"worldlab-player-{p.player_id}.json"]
        path = runtime_dir / f"worldlab-player-{p.player_id}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        entry = json.loads(path.read_text())
        assert entry == {"port": port, "secret": ep.secret, "pid": os.getpid(), "max_offer_bytes": 64 * 1024}
        assert not list(runtime_dir.glob(".worldlab-*"))  # the atomic write left no temp file
        found, state = registry.lookup(p.player_id)
        assert state == "ok" and found == entry
    finally:
        p.close()
    assert announcements(runtime_dir) == []
    assert registry.lookup(p.player_id) == (None, "unknown")
    assert ep.port is None and ep.runner is None and not ep.players
    assert not port_open(port)  # the endpoint stopped with its last player


def test_secret_and_player_ids_are_checked():
    p = oracle_player()
    try:
        port, secret = p.endpoint.port, p.endpoint.secret
        status, body = http(port, "GET", f"/players/{p.player_id}")
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = http(port, "GET", f"/players/{p.player_id}", secret=secret[:-1] + "x")
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = http(port, "POST", f"/players/{p.player_id}/toggle", {"window": "long"})
        assert status == 403 and p.window == "short"  # no secret: nothing is switched
        status, body = http(port, "GET", "/players/" + "A" * 22, secret=secret)
        assert status == 404 and body["error"]["code"] == "gone"
        status, body = http(port, "GET", f"/players/{p.player_id}", secret=secret)
        assert status == 200
        assert body["status"] == "live" and body["room"] == p.room.id and body["views"] == 0
        assert body["mode"] == "none"
        assert body["toggles"] == {"weights": "fp32", "window": "short", "kv": "none"}
    finally:
        p.close()


async def test_a_real_webrtc_offer_through_the_endpoint():
    p = oracle_player()
    client = None
    try:
        client = Client()
        base = f"http://127.0.0.1:{p.endpoint.port}/players/{p.player_id}"
        headers = {registry.SECRET_HEADER: p.endpoint.secret}
        async with aiohttp.ClientSession(headers=headers) as http_session:
            async with http_session.post(f"{base}/offer", json={"sdp": "nope"}) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "bad_sdp"
            async with http_session.post(f"{base}/offer", data=b"{not json",
                                         headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "bad_json"
            async with http_session.post(f"{base}/offer", json=["v=0"]) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "bad_json"
            assert p.views == 0 and not p.hub.pcs  # refused offers leave nothing behind

            await client.pc.setLocalDescription(await client.pc.createOffer())
            offer = {"sdp": client.pc.localDescription.sdp, "type": client.pc.localDescription.type}
            async with http_session.post(f"{base}/offer", json=offer) as r:
                assert r.status == 200
                ans = await r.json()
            assert ans["type"] == "answer" and ans["sdp"].startswith("v=0")
            assert ans["room"] == p.room.id and ans["role"] == "player"
            await client.pc.setRemoteDescription(RTCSessionDescription(ans["sdp"], ans["type"]))
            await client.wait_for(client.opened.is_set)
            await client.wait_for(lambda: len(client.frames) >= 10)
            assert client.frames[-1].shape[2] == 3
            assert p.views == 1 and len(p.hub.pcs) == 1 and p.mode == "webrtc"
            assert list(p.hub.rooms) == [p.room.id]  # joined the Player's room, no new one

            async with http_session.get(base) as r:
                st = await r.json()
            assert r.status == 200 and st["views"] == 1 and st["mode"] == "webrtc"
    finally:
        if client is not None:
            await client.pc.close()
        p.close()
    assert not p.hub.pcs and not p.hub.rooms


def test_toggle_through_the_endpoint_reloads_the_players_checkpoint(micro_ckpt):
    own_hash = load_model(str(micro_ckpt[0])).checkpoint_hash
    p = Player(str(micro_ckpt[0]), prompt="a walk in the forest")
    try:
        port, secret = p.endpoint.port, p.endpoint.secret
        old = p.room.model
        assert old.window_name == "short" and old.checkpoint_hash == own_hash  # the given file, not the shipped one
        deadline = time.monotonic() + 10  # a switch needs a couple of frames to prefill from
        while time.monotonic() < deadline and len(p.room.session.recent) < 2:
            time.sleep(0.05)

        status, body = http(port, "POST", f"/players/{p.player_id}/toggle", {"window": "long"}, secret=secret)
        assert status == 200 and body == {"weights": "fp32", "window": "long", "kv": "none"}
        assert p.window == "long" and p.weights == "fp32" and p.kv == "none"
        assert p.room.model is not old and p.room.model.window_name == "long"
        assert p.room.model.checkpoint_hash == old.checkpoint_hash == own_hash  # the same checkpoint, reloaded
        ds = p.record(0.5)
        assert ds.sizes["frame"] >= 10 and ds.attrs["window"] == "long" and (ds["model_ms"] > 0).all()

        status, body = http(port, "POST", f"/players/{p.player_id}/toggle", {"window": "huge"}, secret=secret)
        assert status == 400 and body["error"]["code"] == "bad_toggle" and "huge" in body["error"]["message"]
        status, body = http(port, "POST", f"/players/{p.player_id}/toggle", {"speed": 2}, secret=secret)
        assert status == 400 and body["error"]["code"] == "bad_toggle"
        assert p.window == "long" and p.room.model.window_name == "long"
        status, body = http(port, "GET", f"/players/{p.player_id}", secret=secret)
        assert status == 200 and body["toggles"]["window"] == "long"
    finally:
        p.close()


def test_two_players_in_one_kernel(runtime_dir):
    before = len(worker_threads())
    a = oracle_player(seed=1)
    b = None
    try:
        b = oracle_player(seed=2)
        assert a.player_id != b.player_id and a.room.id != b.room.id and a.hub is not b.hub
        assert a.endpoint is b.endpoint
        port, secret = a.endpoint.port, a.endpoint.secret
        assert announcements(runtime_dir) == sorted(f"worldlab-player-{x.player_id}.json" for x in (a, b))
        for x in (a, b):
            assert registry.lookup(x.player_id)[0]["port"] == port
            status, body = http(port, "GET", f"/players/{x.player_id}", secret=secret)
            assert status == 200 and body["room"] == x.room.id

        a.close()
        assert announcements(runtime_dir) == [f"worldlab-player-{b.player_id}.json"]
        assert registry.lookup(a.player_id) == (None, "unknown") and registry.lookup(b.player_id)[1] == "ok"
        assert b.endpoint.port == port and port_open(port)
        status, body = http(port, "GET", f"/players/{a.player_id}", secret=secret)
        assert status == 404 and body["error"]["code"] == "gone"
        status, body = http(port, "GET", f"/players/{b.player_id}", secret=secret)
        assert status == 200 and body["status"] == "live" and body["room"] == b.room.id
        assert b.record(0.3).sizes["frame"] >= 5  # the other session still runs
    finally:
        a.close()
        if b is not None:
            b.close()
    assert len(worker_threads()) == before
    assert not a.hub.pcs and not b.hub.pcs and not a.hub.rooms and not b.hub.rooms
    assert announcements(runtime_dir) == []
    assert not port_open(port)


def test_kernel_exit_leaves_a_tombstone_reported_once(runtime_dir):
    p = oracle_player()
    try:
        pid = p.player_id
        player_mod.close_all(kernel_exit=True)
        assert p.status == "closed" and p not in player_mod._live
        assert json.loads((runtime_dir / f"worldlab-player-{pid}.json").read_text())["exited"] is True
        assert registry.lookup(pid) == (None, "kernel_gone")
        assert registry.lookup(pid) == (None, "unknown")
        assert announcements(runtime_dir) == []
    finally:
        p.close()


def test_a_stale_file_of_a_dead_kernel_is_kernel_gone_and_removed(runtime_dir):
    pid = "stale_player_id_0123456789"
    runtime_dir.mkdir(parents=True, exist_ok=True)
    path = runtime_dir / f"worldlab-player-{pid}.json"
    path.write_text(json.dumps({"port": 45678, "secret": "s" * 43, "pid": 2**22 + 7, "max_offer_bytes": 1024}))
    assert registry.lookup(pid) == (None, "kernel_gone")
    assert not path.exists()
    assert registry.lookup(pid) == (None, "unknown")
    # A live pid (this process) with the same shape is "ok"; a malformed file is "unknown" and left alone.
    entry = {"port": 45678, "secret": "s" * 43, "pid": os.getpid(), "max_offer_bytes": 1024}
    path.write_text(json.dumps(entry))
    assert registry.lookup(pid) == (entry, "ok")
    path.write_text(json.dumps({"port": "45678", "secret": "s", "pid": os.getpid(), "max_offer_bytes": 1024}))
    assert registry.lookup(pid) == (None, "unknown") and path.exists()
    assert registry.lookup("../../etc/passwd") == (None, "unknown")
