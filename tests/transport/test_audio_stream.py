"""The sound track end to end in one event loop: an aiortc client that offers audio gets Opus on the same peer
connection and stream as the video, one click per flagged `frame` message; SessionConfig.audio off sends none."""

import asyncio
import contextlib

import numpy as np
import pytest

from worldlab.config import SessionConfig
from worldlab.engine import Scheduler
from worldlab.engine.audio import CLICK_GAP_S, SAMPLE_RATE
from worldlab.engine.oracle import EnvOracle
from worldlab.transport.client import PeerClient
from worldlab.transport.peer import PeerHub

LOUD = 0.5 * 32767  # a click's first samples reach 0.9 full scale; the tone stays at 0.08


@contextlib.asynccontextmanager
async def streaming(config: SessionConfig, audio: bool = True):
    model = EnvOracle(seed=0)  # seed 0: both objects bounce off a wall within the first 2 s
    sched = Scheduler(model).start()
    hub = PeerHub(model, sched, fps=30.0, config=config)
    client = PeerClient(keep_frames=False, audio=audio)
    try:
        yield client, hub, await client.connect(hub)
    finally:
        await client.pc.close()
        await hub.close()
        sched.stop()


def decoded_clicks(frames) -> int:
    """Click onsets in the decoded audio (loud runs more than CLICK_GAP_S apart)."""
    x = np.concatenate([f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0] for f in frames]).astype(np.int32)
    loud = np.nonzero(np.abs(x) > LOUD)[0]
    return int(np.count_nonzero(np.diff(loud) > CLICK_GAP_S * SAMPLE_RATE / 2)) + (len(loud) > 0)


@pytest.mark.timeout(90)
async def test_audio_rides_the_video_stream_and_clicks_match_flagged_frames():
    async with streaming(SessionConfig()) as (client, hub, ans):
        sdp = client.pc.remoteDescription.sdp
        msids = {line.split()[0] for line in sdp.splitlines() if line.startswith("a=msid:")}
        assert "m=audio" in sdp and "opus" in sdp.lower() and len(msids) == 1  # one stream: Chrome lip-syncs it
        await client.wait_for(lambda: sum(bool(m.get("click")) for m in client.msgs if m["type"] == "frame") >= 2,
                              timeout=30)
        await asyncio.sleep(0.5)  # the last click's audio frame follows its video frame
        flagged = sum(bool(m.get("click")) for m in client.msgs if m["type"] == "frame")
        assert len(client.audio_frames) > 50
        heard = decoded_clicks(client.audio_frames)
        assert flagged - 1 <= heard <= flagged + 1  # the first / last may straddle the start or the cut
        assert hub.rooms[ans["room"]].session.sound.clicks >= flagged


@pytest.mark.timeout(60)
async def test_audio_off_sends_no_sound_and_a_video_only_client_still_streams():
    async with streaming(SessionConfig(audio=False)) as (client, hub, ans):
        await client.wait_for(lambda: client.n_frames >= 30, timeout=20)
        assert not client.audio_frames and hub.rooms[ans["room"]].audio is None
        assert not any(m.get("click") for m in client.msgs)
    async with streaming(SessionConfig(), audio=False) as (client, hub, ans):
        await client.wait_for(lambda: client.n_frames >= 30, timeout=20)
        assert "m=audio" not in client.pc.remoteDescription.sdp


@pytest.mark.timeout(60)
async def test_the_lead_follows_the_players_reported_audio_path():
    async with streaming(SessionConfig(audio_lead_ms=90.0)) as (client, hub, ans):
        sound = hub.rooms[ans["room"]].session.sound
        assert sound.lead_s == pytest.approx(0.090)
        client.send(type="report", av_path_ms=130.0)
        await client.wait_for(lambda: sound.lead_s == pytest.approx(0.130), timeout=5)  # the next stats tick
        client.send(type="report", av_path_ms=9000.0)  # a page gone wrong cannot push it past the cap
        await client.wait_for(lambda: sound.lead_s == pytest.approx(0.5), timeout=5)
        flagged = [m for m in client.msgs if m["type"] == "frame" and m.get("click")]
        assert all(isinstance(m["lead_ms"], float) for m in flagged)  # what the page adds to its offsets


def test_a_lead_out_of_range_is_refused_at_start():
    with pytest.raises(ValueError, match="audio_lead_ms must be in"):
        PeerHub(EnvOracle(), None, config=SessionConfig(audio_lead_ms=-5.0))
