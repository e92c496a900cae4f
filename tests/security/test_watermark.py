"""The provenance watermark: exact id back without compression and through the server's own VP8 encoder at the
low rung, nothing found in clean clips or under another key, PSNR cost >= 40 dB, and RoomTrack applying it."""

import numpy as np
import pytest

from benchmarks.watermark_bench import psnr, stream, world_frames, write_clip
from worldlab.commands.verify_cmd import iter_lumas
from worldlab.security.watermark import Embedder, Watermark, format_id, luma

WM_ID = 0xF00DFACE_12345678  # top bit set: the whole 64-bit range is used


@pytest.fixture(scope="module")
def marked_clip(tmp_path_factory):
    """A 3 s low-rung clip as the live stream records it: watermark, RoomEncoder (VP8 250 kbit/s), WebM."""
    frames = world_frames(seed=3, rung="low")
    path = tmp_path_factory.mktemp("wm") / "marked.webm"
    return list(iter_lumas(str(write_clip(stream(frames, WM_ID, "low"), path, frames.shape[1:3]))))


@pytest.mark.parametrize("rung", ["low", "high"])
def test_round_trip_without_compression_gives_the_exact_id(rung):
    mark = Embedder(WM_ID)
    d = Watermark().detect(luma(mark(f)) for f in world_frames(seed=1, rung=rung, n=10))
    assert d.found and d.watermark_id == WM_ID and d.corrected == 0
    assert d.hex_id == format_id(WM_ID) == "f00dface12345678"


def test_through_the_room_encoder_at_the_low_rung_the_exact_id_is_recovered(marked_clip):
    assert len(marked_clip) >= 90 and marked_clip[0].shape == (128, 128)
    d = Watermark().detect(marked_clip)
    assert d.found and d.watermark_id == WM_ID
    assert d.raw_id == WM_ID  # no bit needed correcting on the stream itself
    assert d.bit_confidence > 0.99


def test_another_key_finds_nothing_in_a_marked_clip(marked_clip):
    d = Watermark("some other server's key").detect(marked_clip)
    assert not d.found and d.watermark_id is None


def test_a_clean_clip_has_no_watermark(tmp_path):
    frames = world_frames(seed=7, rung="low")
    d = Watermark().detect(iter_lumas(str(write_clip(stream(frames, None), tmp_path / "c.webm", frames.shape[1:3]))))
    assert not d.found and d.watermark_id is None and d.hex_id is None


@pytest.mark.parametrize("seed", range(4))  # one per theme: dark night, bright snow, ...
def test_embedding_costs_less_than_40_db_psnr_on_every_frame(seed):
    mark = Embedder(WM_ID)
    frames = world_frames(seed=seed, rung="high", n=15)
    assert min(psnr(f, mark(f)) for f in frames) >= 40.0


def test_embedding_is_deterministic_and_checks_the_id():
    f = world_frames(seed=2, n=1)[0]
    assert np.array_equal(Embedder(WM_ID)(f), Embedder(WM_ID)(f))
    assert not np.array_equal(Embedder(WM_ID)(f), Embedder(WM_ID, key="k2")(f))
    with pytest.raises(ValueError, match="64-bit"):
        Embedder(1 << 64)


@pytest.mark.timeout(90)
async def test_a_recording_of_the_live_stream_names_its_room():
    """End to end: a WebRTC client receives 3 s of a low-rung room; its decoded frames carry the room's id."""
    from worldlab.engine import Scheduler
    from worldlab.engine.oracle import EnvOracle
    from worldlab.transport.client import PeerClient
    from worldlab.transport.peer import PeerHub

    model = EnvOracle(seed=4)
    sched = Scheduler(model).start()
    hub = PeerHub(model, sched, fps=30.0)
    client = PeerClient()
    try:
        ans = await client.connect(hub, quality="low")
        await client.wait_for(lambda: len(client.frames) >= 95, timeout=30)
        d = Watermark().detect(luma(f) for f in client.frames[5:])
        assert client.frames[-1].shape == (128, 128, 3)
        assert d.found and d.watermark_id == hub.rooms[ans["room"]].watermark_id
    finally:
        await client.close()
        await hub.close()
        sched.stop()
