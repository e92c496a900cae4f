"""The encrypted triage buffer: real VP8 packets and inputs round-trip through seal/open/export (MP4 that
decodes, input log); memory stays bounded by time and bytes; a wrong key, a flipped byte, a truncated or
foreign file are refused; key and sealed files are owner-only."""

import json
import os

import av
import numpy as np
import pytest

from worldlab import env
from worldlab.security import ringbuffer as rb
from worldlab.transport.encoder import RoomEncoder


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def clip(n=60, scale=2, codec="vp8"):
    actions = env.random_actions(n - 1, 3)
    frames = env.rollout(3, "forest", actions)
    enc = RoomEncoder(codec, fps=30)
    out = []
    for i, f in enumerate(frames):
        big = f.repeat(scale, 0).repeat(scale, 1)
        pkt = enc.encode(big, i * 3000, 250_000)
        out.append((bytes(pkt), i * 3000, i % enc.gop == 0))
    return out, actions


@pytest.fixture
def key(tmp_path):
    return rb.load_server_key(tmp_path / "triage.key")


@pytest.mark.parametrize("codec", ["vp8", "h264", "av1"])
def test_round_trip_seal_open_export(tmp_path, key, codec):
    clock = Clock()
    buf = rb.TriageBuffer("s-test", key, codec=codec, seconds=30, clock=clock)
    packets, actions = clip(codec=codec)
    for i, (data, pts, kf) in enumerate(packets):
        clock.t = i / 30
        buf.add_frame(data, pts, kf)
        if i < len(actions):
            buf.add_input({"type": "action", "keys": [], "seq": i})
    buf.add_input({"type": "prompt", "text": "a snowy day", "seq": 99})
    sealed = buf.seal(tmp_path / "x.triage")
    assert oct(os.stat(sealed).st_mode & 0o777) == "0o600"
    assert b"snowy" not in sealed.read_bytes()  # encrypted at rest
    opened = rb.open_sealed(sealed, key)
    assert len(opened.frames) == 60 and [f[3] for f in opened.frames] == [p[0] for p in packets]
    assert opened.inputs[-1][1] == {"type": "prompt", "text": "a snowy day", "seq": 99}
    video, log = rb.export(opened, tmp_path / "out", size=128)
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 60 and frames[0].shape == (128, 128, 3)
    truth = env.rollout(3, "forest", actions)[-1].repeat(2, 0).repeat(2, 1).astype(float)
    assert np.abs(frames[-1].astype(float) - truth).mean() < 12  # the same picture, not noise
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 60 and lines[-1]["text"] == "a snowy day"


def test_memory_is_bounded_by_time_and_bytes(key):
    clock = Clock()
    buf = rb.TriageBuffer("s-long", key, seconds=5, max_bytes=200_000, clock=clock)
    for i in range(30 * 120):  # two minutes at 30 fps
        clock.t = i / 30
        buf.add_frame(b"x" * 400, i, i % 20 == 0)
        buf.add_input({"type": "action", "keys": ["left"], "seq": i})
    assert len(buf) <= 2 * 30 * 5 + 2 and buf.nbytes <= 200_000
    small = rb.TriageBuffer("s-bytes", key, seconds=60, max_bytes=50_000, clock=clock)
    for i in range(1000):
        small.add_frame(b"y" * 1000, i, True)
    assert small.nbytes <= 50_000 and len(small) < 60


def test_tampering_wrong_keys_and_foreign_files_are_refused(tmp_path, key):
    buf = rb.TriageBuffer("s-tamper", key, seconds=30)
    for i in range(5):
        buf.add_frame(bytes([i]) * 100, i, True)
    sealed = buf.seal(tmp_path / "t.triage")
    lines = sealed.read_text().splitlines()
    rec = json.loads(lines[3])
    blob = bytearray(__import__("base64").b64decode(rec["c"]))
    blob[7] ^= 1
    rec["c"] = __import__("base64").b64encode(bytes(blob)).decode()
    bad = tmp_path / "bad.triage"
    bad.write_text("\n".join(lines[:3] + [json.dumps(rec)] + lines[4:]) + "\n")
    with pytest.raises(rb.TriageError, match="entry 3 fails its integrity check"):
        rb.open_sealed(bad, key)
    with pytest.raises(rb.TriageError, match="wrong server key"):
        rb.open_sealed(sealed, rb.load_server_key(tmp_path / "other.key"))
    trunc = tmp_path / "trunc.triage"
    trunc.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(rb.TriageError, match="truncated"):
        rb.open_sealed(trunc, key)
    swapped = tmp_path / "swap.triage"  # an entry moved to another session's file fails too
    other = rb.TriageBuffer("s-other", key, seconds=30)
    other.add_frame(b"z" * 100, 0, True)
    other_lines = other.seal(tmp_path / "o.triage").read_text().splitlines()
    swapped.write_text("\n".join(lines[:1] + other_lines[1:2] + lines[2:]) + "\n")
    with pytest.raises(rb.TriageError, match="integrity"):
        rb.open_sealed(swapped, key)
    (tmp_path / "foreign").write_text("hello\n")
    with pytest.raises(rb.TriageError, match="not a worldlab triage file"):
        rb.open_sealed(tmp_path / "foreign", key)


def test_server_key_file(tmp_path):
    path = tmp_path / "k" / "triage.key"
    k1 = rb.load_server_key(path)
    assert len(k1) == 32 and oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert rb.load_server_key(path) == k1
    with pytest.raises(rb.TriageError, match="no triage key"):
        rb.load_server_key(tmp_path / "missing.key", create=False)
    (tmp_path / "short.key").write_text("AAAA\n")
    with pytest.raises(rb.TriageError, match="32 bytes"):
        rb.load_server_key(tmp_path / "short.key")


def test_triage_open_command(tmp_path, key, capsys):
    from worldlab.cli import main

    buf = rb.TriageBuffer("s-cli", key, seconds=30)
    packets, _ = clip(n=30)
    for data, pts, kf in packets:
        buf.add_frame(data, pts, kf)
    buf.add_input({"type": "prompt", "text": "a walk at night", "seq": 1})
    sealed = buf.seal(tmp_path / "cli.triage", reason="flag: prompt")
    keyfile = tmp_path / "triage.key"
    assert main(["triage", "open", str(sealed), "--key", str(keyfile), "--out", str(tmp_path / "o"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["frames"] == 30 and out["inputs"] == 1 and out["reason"] == "flag: prompt"
    assert os.path.getsize(out["video"]) > 1000
    # bad input: one line each, exit 2
    assert main(["triage", "open", str(tmp_path / "nope.triage"), "--key", str(keyfile)]) == 2
    assert main(["triage", "open", str(sealed), "--key", str(tmp_path / "missing.key")]) == 2
    (tmp_path / "junk").write_text("junk")
    assert main(["triage", "open", str(tmp_path / "junk"), "--key", str(keyfile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("worldlab triage: error:") for line in err), err


async def test_live_session_feeds_its_buffer_and_a_flag_seals_it(tmp_path):
    from tests.transport.test_hardening import hub_on, until
    from worldlab.transport.client import PeerClient

    store = rb.TriageStore.at(tmp_path / "triage", seconds=10)
    async with hub_on(triage=store) as (hub, _sched):
        client = PeerClient(keep_frames=False)
        try:
            ans = await client.connect(hub)
            room = hub.rooms[ans["room"]]
            await client.wait_for(lambda: client.n_frames >= 45)
            client.send(type="action", keys=["right"])
            client.send(type="prompt", text="a snowy day")
            await client.wait_for(lambda: room.session.prompt == "a snowy day")
            await client.wait_for(lambda: client.n_frames >= 75)
            client.send(type="prompt", text="n.u.d.e")  # refused and flagged: the buffer is sealed
            await until(lambda: list((tmp_path / "triage").glob("*.triage")))
        finally:
            await client.close()
    sealed = next((tmp_path / "triage").glob("*.triage"))
    opened = rb.open_sealed(sealed, store.key)
    assert opened.head["session"] == room.session.id and opened.head["reason"].startswith("flag: prompt refused")
    kinds = [m["type"] for _t, m in opened.inputs]
    assert kinds == ["action", "prompt", "prompt_refused"], kinds
    assert opened.inputs[1][1]["text"] == "a snowy day" and "frame_id" in opened.inputs[0][1]
    assert len(opened.frames) >= 60 and any(f[2] for f in opened.frames)  # keyframes flagged
    video, _log = rb.export(opened, tmp_path / "out", size=128)
    with av.open(str(video)) as c:
        n = sum(1 for _ in c.decode(video=0))
    first_key = next(i for i, f in enumerate(opened.frames) if f[2])
    assert n == len(opened.frames) - first_key


async def test_triage_route_seals_on_request_and_refuses_bad_input(tmp_path):
    from tests.server.test_hardening import client_offer, post, serving

    store = rb.TriageStore.at(tmp_path / "t", seconds=10)
    async with serving(triage=store) as c:
        async with client_offer() as sdp:
            status, ans, _ = await post(c, {"sdp": sdp, "type": "offer"})
            assert status == 200
            r = await c.post(f"/triage/{ans['room']}", headers={"X-Forwarded-For": "203.0.113.9"})
            assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden"  # not loopback, no token
            r = await c.post("/triage/no-such-room")
            assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_room"
            r = await c.post(f"/triage/{ans['room']}")
            body = await r.json()
            assert r.status == 200 and body["session"] and (tmp_path / "t" / body["file"]).is_file()
    async with serving() as c:  # a server without triage buffers says so
        async with client_offer() as sdp:
            status, ans, _ = await post(c, {"sdp": sdp, "type": "offer"})
            r = await c.post(f"/triage/{ans['room']}")
            assert r.status == 409 and (await r.json())["error"]["code"] == "no_triage"
