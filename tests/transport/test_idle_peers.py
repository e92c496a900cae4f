"""Idle rooms (issue 28): a room whose every peer has stopped sending RTCP for peer_silence_s sends two probe
frames a second and its model stops stepping, until a report or a new viewer comes; an offer's room is stepped
from its peer's connection on (tests/transport/test_hardening.py checks the never-connecting side)."""

import asyncio

import pytest

from worldlab.config import SessionConfig
from worldlab.transport.track import IDLE_PERIOD_S

from tests.transport.test_hardening import hub_on, until
from tests.transport.test_inprocess import Client

pytestmark = pytest.mark.timeout(120)


def receivers(client):
    return [t.receiver for t in client.pc.getTransceivers()]


def silence(client) -> None:
    """The client's receivers stop their RTCP reports, as a killed client's do (aiortc keeps the task private)."""
    for r in receivers(client):
        r._RTCRtpReceiver__rtcp_task.cancel()


def speak_again(client) -> None:
    for r in receivers(client):
        r._RTCRtpReceiver__rtcp_task = asyncio.ensure_future(r._run_rtcp())


def idle_gauge(hub) -> float:
    """worldlab_rooms_idle as /metrics would report it."""
    from worldlab.server.metrics import HubCollector

    family = next(f for f in HubCollector(hub).collect() if f.name == "worldlab_rooms_idle")
    return family.samples[0].value


async def close(*clients) -> None:
    for c in clients:
        await c.pc.close()


async def idle_room(hub, sched, player):
    ans = await player.connect(hub)
    room = hub.rooms[ans["room"]]
    await until(lambda: player.n_frames >= 10)
    assert not room.track.idle and sched.stepping(room.session)
    silence(player)
    await until(lambda: room.track.idle, timeout=8)
    return room


async def test_a_silent_player_idles_its_room_until_it_reports_again():
    async with hub_on(config=SessionConfig(peer_silence_s=1.0)) as (hub, sched):
        player = Client(keep_frames=False)
        try:
            room = await idle_room(hub, sched, player)
            assert not sched.stepping(room.session)  # the model waits where the player left the world
            assert idle_gauge(hub) == 1
            sent, fid = room.track.sent, room.session.frame_id
            await asyncio.sleep(2.0)
            assert room.session.frame_id == fid
            probes = room.track.sent - sent
            assert 1 <= probes <= 2.0 / IDLE_PERIOD_S + 1, probes  # not the 60 of two seconds at 30 fps
            keyframes = room.track.encoder.keyframes
            speak_again(player)
            await until(lambda: not room.track.idle, timeout=6)
            assert sched.stepping(room.session)
            n = player.n_frames
            await until(lambda: player.n_frames >= n + 20, timeout=5)  # full rate again
            assert room.track.encoder.keyframes > keyframes  # it resumed from a keyframe
            assert idle_gauge(hub) == 0
        finally:
            await close(player)


async def test_a_viewer_joining_an_idle_room_wakes_it():
    async with hub_on(config=SessionConfig(peer_silence_s=1.0)) as (hub, sched):
        player, viewer = Client(keep_frames=False), Client(keep_frames=False)
        try:
            room = await idle_room(hub, sched, player)
            await viewer.connect(hub, room=room.id, role="viewer")
            await until(lambda: not room.track.idle and sched.stepping(room.session), timeout=5)
            n = viewer.n_frames
            await until(lambda: viewer.n_frames >= n + 20, timeout=5)
            await asyncio.sleep(1.5)  # the viewer reports: the room stays awake though the player is silent
            assert not room.track.idle
        finally:
            await close(player, viewer)


async def test_a_zero_silence_never_idles():
    async with hub_on(config=SessionConfig(peer_silence_s=0.0)) as (hub, sched):
        player = Client(keep_frames=False)
        try:
            ans = await player.connect(hub)
            room = hub.rooms[ans["room"]]
            await until(lambda: player.n_frames >= 5)
            silence(player)
            n = player.n_frames
            await until(lambda: player.n_frames >= n + 60, timeout=6)  # two seconds of silence, still 30 fps
            assert not room.track.idle and sched.stepping(room.session)
        finally:
            await close(player)


def test_a_negative_silence_is_one_clear_error():
    with pytest.raises(ValueError, match="peer_silence_s must be >= 0"):
        SessionConfig(peer_silence_s=-1.0)


async def test_a_closed_room_is_freed_at_once_not_after_its_connect_deadline():
    """The connect deadline's task ends when its peer connects: asleep for connect_timeout_s it held the closed
    room and peer (encoder, transports), +1.1 GB of RSS under 4 lanes of short sessions (issue 28)."""
    import gc
    import weakref

    async with hub_on(config=SessionConfig(connect_timeout_s=60.0)) as (hub, _sched):
        player = Client(keep_frames=False)
        ans = await player.connect(hub)
        room = weakref.ref(hub.rooms[ans["room"]])
        await until(lambda: player.n_frames >= 5)
        await close(player)
        await until(lambda: ans["room"] not in hub.rooms, timeout=10)
        await asyncio.sleep(1.5)  # the stats loop (1 s) and aiortc's own tasks wind down
        gc.collect()
        assert room() is None and not hub._deadlines
