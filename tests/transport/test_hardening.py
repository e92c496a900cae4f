"""Issue 12's defects, in one event loop (aiortc client against PeerHub), each written to fail on the code
before the fix: a deeply nested `ctl` message, rooms whose peer never connects, admission limits, a
spectator changing the player's stream, oversized data-channel messages, mutated SDP, the ICE bind address
and guessable room ids."""

import asyncio
import contextlib
import re
import threading

import pytest

from worldlab.config import SessionConfig
from worldlab.engine import Scheduler
from worldlab.engine.oracle import EnvOracle
from worldlab.transport.peer import PeerHub
from worldlab.transport.rooms import OfferError
from worldlab.transport.client import local_peer_connection

from tests.transport.test_inprocess import Client

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def hub_on(model=None, **hub_kw):
    """A PeerHub (oracle by default); on exit no peer, room or model worker may remain."""
    model = model or EnvOracle(seed=5)
    sched = Scheduler(model).start()
    hub = PeerHub(model, sched, fps=30.0, **hub_kw)
    try:
        yield hub, sched
    finally:
        await hub.close()
        sched.stop()
    assert not hub.pcs and not hub.rooms and not sched.alive
    assert not [t for t in threading.enumerate() if t.name == "worldlab-model"]


@contextlib.asynccontextmanager
async def offer_sdp(*, candidates=True, end_of_candidates=True):
    """An offer as a browser would send it; without end-of-candidates it is a trickle offer whose
    candidates never come (Chrome puts no a=end-of-candidates in its SDP)."""
    pc = local_peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("ctl")
    await pc.setLocalDescription(await pc.createOffer())
    lines = pc.localDescription.sdp.split("\r\n")
    if not candidates:
        lines = [ln for ln in lines if not ln.startswith("a=candidate")]
    if not end_of_candidates:
        lines = [ln for ln in lines if ln != "a=end-of-candidates"]
    try:
        yield pc, "\r\n".join(lines)
    finally:
        await pc.close()


async def until(pred, timeout=10.0):
    async def poll():
        while not pred():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


def errors(client):
    return client.errors()


# -- defect 1: a deeply nested message must not kill the session ----------------------------------------
async def test_deeply_nested_message_gets_an_error_and_the_stream_goes_on():
    async with hub_on() as (hub, _sched):
        client = Client()
        try:
            await client.connect(hub)
            await client.wait_for(lambda: len(client.frames) >= 5)
            client.ch.send("[" * 1100)  # the probe's 1.1 KB message: RecursionError in json.loads
            client.ch.send("[" * 2000 + "]" * 2000)
            client.ch.send(b"[" * 1100)
            await client.wait_for(lambda: len(errors(client)) >= 3)
            assert errors(client) == ["bad_json"] * 3
            n = len(client.frames)
            await client.wait_for(lambda: len(client.frames) >= n + 15)  # still streaming
            client.send(type="ping", t=4.5)
            await client.wait_for(lambda: any(m["type"] == "pong" and m["t"] == 4.5 for m in client.msgs))
        finally:
            await client.pc.close()


# -- defect 3: rooms whose peer never connects are reaped ---------------------------------------------
@pytest.mark.parametrize("how", ["no_candidates", "killed_after_answer"])
async def test_rooms_whose_peer_never_connects_are_reaped(how):
    cfg = SessionConfig(connect_timeout_s=1.0)
    async with hub_on(config=cfg) as (hub, sched):
        async with offer_sdp(candidates=how != "no_candidates", end_of_candidates=False) as (pc, sdp):
            await hub.offer(sdp, "offer", room="lobby")
            if how == "killed_after_answer":
                await pc.close()  # gone before applying the answer: its sockets are closed
            room = hub.rooms["lobby"]
            session = room.session
            fid = session.frame_id
            await asyncio.sleep(0.3)
            # Not stepped while its peer has not connected: a never-connecting offer costs no model steps.
            assert session not in sched.sessions() and session.frame_id == fid
            await until(lambda: "lobby" not in hub.rooms, timeout=8)
        assert session not in sched.sessions() and not hub.pcs and not room.pcs
        async with offer_sdp() as (_pc2, sdp2):  # its name is free again (no 409)
            assert (await hub.offer(sdp2, "offer", room="lobby"))["room"] == "lobby"


async def test_a_connected_player_is_not_reaped():
    async with hub_on(config=SessionConfig(connect_timeout_s=3.0)) as (hub, _sched):
        client = Client()
        try:
            ans = await client.connect(hub)
            await asyncio.sleep(3.5)
            assert ans["room"] in hub.rooms
            n = len(client.frames)
            await client.wait_for(lambda: len(client.frames) >= n + 5)
        finally:
            await client.pc.close()


# -- defect 4: admission control ------------------------------------------------------------------------
async def test_sessions_beyond_the_limit_are_told_the_server_is_full():
    cfg = SessionConfig(max_sessions=2, max_viewers_per_room=1)
    async with hub_on(config=cfg) as (hub, _sched), offer_sdp() as (_pc, sdp):
        results = await asyncio.gather(*[hub.offer(sdp, "offer") for _ in range(5)], return_exceptions=True)
        ok = [r for r in results if isinstance(r, dict)]
        full = [r for r in results if isinstance(r, OfferError)]
        assert len(ok) == 2 and len(full) == 3 and len(hub.rooms) == 2
        assert all((e.status, e.code) == (503, "server_full") for e in full)

        room = ok[0]["room"]
        assert (await hub.offer(sdp, "offer", room=room, role="viewer"))["role"] == "viewer"
        with pytest.raises(OfferError) as info:
            await hub.offer(sdp, "offer", room=room, role="viewer")
        assert (info.value.status, info.value.code) == (503, "room_full")
        assert hub.rooms[room].viewers == 1

        await hub._close_room(hub.rooms[ok[1]["room"]])  # a slot frees up: the next player is admitted
        assert (await hub.offer(sdp, "offer"))["role"] == "player"


# -- defect 5: a spectator cannot change the player's stream ------------------------------------------
async def test_a_spectator_cannot_change_quality_or_steer():
    async with hub_on() as (hub, _sched):
        player, viewer = Client(), Client()
        try:
            ans = await player.connect(hub)
            await viewer.connect(hub, room=ans["room"], role="viewer")
            room = hub.rooms[ans["room"]]
            assert room.track.rung == "256p"  # auto starts at SessionConfig.quality_start
            viewer.send(type="quality", preset="low")
            viewer.send(type="action", keys=["right"])
            viewer.send(type="prompt", text="a snowy night")
            await viewer.wait_for(lambda: len(errors(viewer)) >= 3)
            assert errors(viewer) == ["forbidden"] * 3
            # "low" would be the bottom rung; auto may only have climbed on its own meanwhile
            assert room.track.rung in ("256p", "384p") and room.quality == "auto"
            assert room.session.prompt != "a snowy night"
            viewer.send(type="ping", t=2.0)
            await viewer.wait_for(lambda: any(m["type"] == "pong" for m in viewer.msgs))
            player.send(type="quality", preset="low")  # the player still can
            await until(lambda: room.track.rung == "128p-lean", timeout=5)  # low: the bottom rung
        finally:
            await viewer.pc.close()
            await player.pc.close()


# -- defect 6: the smaller ones -------------------------------------------------------------------------
async def test_data_channel_advertises_its_cap_and_drops_a_peer_that_ignores_it():
    cap = SessionConfig.sctp_max_message_bytes
    async with hub_on() as (hub, _sched):
        client = Client()
        try:
            ans = await client.connect(hub)
            assert f"a=max-message-size:{cap}" in ans["sdp"]
            assert client.pc.sctp._remote_max_message_size == cap  # what an honest client will respect
            client.ch.send("x" * 10_000)  # over the protocol limit, under the channel cap: an error reply
            await client.wait_for(lambda: errors(client) == ["too_large"])
            assert ans["room"] in hub.rooms
            client.pc.sctp._remote_max_message_size = 10**8  # a peer that ignores the advertised size
            client.ch.send("x" * 2_000_000)
            await until(lambda: ans["room"] not in hub.rooms, timeout=10)  # dropped, not reassembled
            assert errors(client) == ["too_large"]
        finally:
            await client.pc.close()


def _mutations(sdp):
    lines = sdp.split("\r\n")
    media = [i for i, ln in enumerate(lines) if ln.startswith("m=")]
    yield sdp.replace("a=mid:0\r\n", "a=mi\r\n")  # the AttributeError in pc.close() the probe found
    yield "\r\n".join(ln for ln in lines if not ln.startswith("m=application"))  # ... and another
    yield "v=0\r\nthis is not sdp"
    yield sdp.replace("a=fingerprint:sha-256", "a=fingerprint:sha-999")
    yield sdp.replace("a=setup:actpass", "a=setup:bogus")
    yield "\r\n".join(ln for ln in lines if not ln.startswith("a=ice-ufrag"))
    yield "\r\n".join(ln for ln in lines if not ln.startswith("a=fingerprint"))
    yield "\r\n".join(ln for ln in lines if not ln.startswith("a=mid"))
    yield "\r\n".join(ln for ln in lines if not ln.startswith("a=rtpmap"))
    yield "\r\n".join(lines[:media[1]])  # no data channel section
    yield "\r\n".join(lines[:media[0]])  # no media at all
    yield sdp.replace("m=video 9", "m=video x").replace("m=application 9", "m=application -1")
    yield sdp.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP")
    yield sdp.replace("webrtc-datachannel", "bogus-protocol")
    yield sdp.replace("a=sctp-port:5000", "a=sctp-port:notaport")
    yield re.sub(r"a=group:BUNDLE .*", "a=group:BUNDLE 7 8", sdp)
    yield sdp.replace("IN IP4", "IN IP9")
    yield sdp.replace("a=recvonly", "a=sendonly")
    yield sdp[: len(sdp) // 2]


async def test_mutated_sdp_is_a_generic_bad_sdp_and_leaves_nothing_behind():
    async with hub_on() as (hub, _sched), offer_sdp() as (_pc, sdp):
        assert "a=group:BUNDLE" in sdp and "a=setup:actpass" in sdp
        for i, bad in enumerate(_mutations(sdp)):
            try:
                await hub.offer(bad, "offer")
            except OfferError as exc:
                assert (exc.status, exc.code) == (400, "bad_sdp"), (i, exc.code, str(exc))
                assert str(exc) == "could not negotiate the offer: malformed or unsupported SDP", i
            else:  # aiortc tolerated it: fine, as long as the room is torn down with the hub
                pass
            for rid in list(hub.rooms):
                await hub._close_room(hub.rooms[rid])
        assert not hub.pcs and not hub.rooms


async def test_ice_binds_the_http_host_and_still_connects():
    async with hub_on(ice_host="127.0.0.1") as (hub, _sched):
        client = Client()
        try:
            ans = await client.connect(hub)
            cands = [ln for ln in ans["sdp"].split("\r\n") if ln.startswith("a=candidate")]
            assert cands and all(ln.split()[4] == "127.0.0.1" for ln in cands), cands
            await client.wait_for(lambda: len(client.frames) >= 10)
        finally:
            await client.pc.close()


async def test_room_ids_are_unguessable():
    async with hub_on() as (hub, _sched), offer_sdp() as (_pc, sdp):
        rooms = [(await hub.offer(sdp, "offer"))["room"] for _ in range(3)]
        assert len(set(rooms)) == 3
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", r) for r in rooms), rooms
