"""worldlab.allocator: the arena cap defers to the operator; a release frees dead cycles and hands freed pages
back to the OS; releases run only while rooms have recently closed, and a served room's close leads to one."""

import asyncio
import subprocess
import sys
import textwrap

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.server.test_histograms import scrape
from tests.transport.test_hardening import until
from worldlab import allocator
from worldlab.config import SessionConfig
from worldlab.engine.oracle import EnvOracle
from worldlab.server import build_app
from worldlab.server.app import HUB
from worldlab.transport.client import PeerClient

GLIBC = allocator._libc() is not None


def test_the_operators_malloc_arena_max_wins_and_zero_means_glibcs_default(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.cap_arenas(2) is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert allocator.cap_arenas(0) is False
    assert allocator.cap_arenas(2) is GLIBC


def test_bad_allocator_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="malloc_arena_max and memory_release_interval_s must be >= 0"):
        SessionConfig(malloc_arena_max=-1)
    with pytest.raises(ValueError, match="must be >= 0"):
        SessionConfig.from_dict({"memory_release_interval_s": -5.0})


def _released_mb(setup: str) -> tuple[float, float]:
    """(MB of RSS a release() gives back, its seconds) after `setup` ran in a fresh interpreter."""
    code = textwrap.dedent("""
        import gc
        import psutil
        from worldlab import allocator
        rss = lambda: psutil.Process().memory_info().rss / 2**20
    """) + textwrap.dedent(setup) + textwrap.dedent("""
        before = rss()
        took = allocator.release()
        print(before - rss(), took)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    released_mb, took_s = map(float, out.stdout.split())
    return released_mb, took_s


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_a_release_returns_the_pages_a_fragmented_heap_keeps():
    """60 MB in 1 kB blocks, every 64th kept: glibc holds the freed pages (a kept block sits above them); the
    release's trim gives them back (measured: nothing comes back without it)."""
    released_mb, took_s = _released_mb("""
        blocks = [bytes(1000) for _ in range(60_000)]
        kept = blocks[::64]
        del blocks
    """)
    assert released_mb > 30 and 0 < took_s < 1.0


def test_a_release_frees_dead_cycles_and_what_they_hold():
    """Like a closed room: objects in a reference cycle holding big buffers, unreachable but not yet collected."""
    released_mb, _ = _released_mb("""
        gc.disable()
        class Room:
            pass
        for _ in range(64):
            room = Room()
            room.me, room.buffer = room, bytearray(1 << 20)
            room.buffer[::4096] = b"x" * 256  # touch every page
        del room
    """)
    assert released_mb > 50


def test_releases_are_due_only_while_rooms_have_recently_closed():
    r = allocator.Releaser(5.0)
    assert not r.due(100.0)  # nothing freed yet: a quiet server never pays for a release
    r.last_freed = 100.0
    assert r.due(100.0 + allocator.RELEASE_SETTLE_S) and not r.due(100.1 + allocator.RELEASE_SETTLE_S)


async def test_a_closed_room_is_followed_by_a_release_on_metrics():
    app = build_app(EnvOracle(seed=1), config=SessionConfig(memory_release_interval_s=0.2))
    hub = app[HUB]
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        client = PeerClient(keep_frames=False)
        try:
            await client.connect_http(http.session, str(http.make_url("/offer")))
            await client.wait_for(lambda: client.n_frames >= 5)
            await asyncio.sleep(0.5)
            assert hub.releaser.count == 0  # a room streaming frees nothing a release waits for
        finally:
            await client.close()
        await until(lambda: not hub.rooms, timeout=20)
        await until(lambda: hub.releaser.count >= 2, timeout=5)
        s = scrape(await (await http.get("/metrics")).text())
        assert s[("worldlab_memory_releases_total", frozenset())] >= 2
        assert s[("worldlab_memory_release_seconds_total", frozenset())] == pytest.approx(hub.releaser.seconds)
