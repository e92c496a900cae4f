"""WebRTC end to end in one event loop: an aiortc client against PeerHub (as aiortc's own tests do).

Checks frames arrive, acks come back, a prompt switch re-themes the received frames, a bad message gets
an `error` reply while the stream continues, and teardown leaves no peer or worker behind; on the oracle,
and on the real model path (the micro checkpoint this session trains): rate, shape, acks, model time.
"""

import asyncio
import contextlib
import json
import threading

import numpy as np
import pytest

from worldlab import env
from worldlab.engine import Scheduler
from worldlab.engine.oracle import EnvOracle
from worldlab.transport.client import PeerClient
from worldlab.transport.peer import PeerHub


def background_color(theme):
    return np.array(env.background(theme)[0, 0], dtype=float)


Client = PeerClient  # the other transport tests import it from here


def dominant_is(frame, theme):
    # The 64x64 frame is upscaled; its top-left pixel is background (the pillar is at x 40..47).
    return np.abs(frame[2, 2].astype(float) - background_color(theme)).max() < 24  # VP8 chroma loss


@contextlib.asynccontextmanager
async def streaming(model, **offer):
    """A PeerHub on `model` with one connected Client; on exit, no peer, room or model worker may remain."""
    sched = Scheduler(model).start()
    hub = PeerHub(model, sched, fps=30.0)
    client = Client()
    try:
        yield client, await client.connect(hub, **offer)
    finally:
        await client.pc.close()
        await hub.close()
        sched.stop()
    assert not hub.pcs and not hub.rooms and not sched.alive
    assert not [t for t in threading.enumerate() if t.name == "worldlab-model"]


@pytest.mark.timeout(90)
async def test_frames_acks_prompt_switch_and_bad_messages():
    async with streaming(EnvOracle(seed=3), prompt="a sunny desert") as (client, ans):
        assert ans["type"] == "answer" and ans["role"] == "player"
        await client.wait_for(lambda: len(client.frames) >= 10)
        assert dominant_is(client.frames[-1], "desert")

        seq = client.send(type="action", keys=["right"], t=0)
        await client.wait_for(lambda: any(m["type"] == "ack" and m["seq"] == seq for m in client.msgs))
        ack = next(m for m in client.msgs if m["type"] == "ack" and m["seq"] == seq)
        assert isinstance(ack["frame_id"], int) and ack["frame_id"] >= 0
        # The acked frame (or a newer one) is announced on the channel, so the page can map it.
        await client.wait_for(lambda: any(m["type"] == "frame" and m["frame_id"] >= ack["frame_id"]
                                          for m in client.msgs))

        client.send(type="ping", t=123.5)
        await client.wait_for(lambda: any(m["type"] == "pong" and m["t"] == 123.5 for m in client.msgs))

        n_before = len(client.frames)
        client.send(type="action", keys=["jump"])  # not a key
        client.ch.send("{not json")
        client.ch.send(json.dumps({"v": 1, "seq": 99, "type": "teleport"}))
        client.ch.send("x" * 5000)
        await client.wait_for(lambda: sum(m["type"] == "error" for m in client.msgs) >= 4)
        codes = [m["code"] for m in client.msgs if m["type"] == "error"]
        assert codes == ["bad_field", "bad_json", "unknown_type", "too_large"]
        await client.wait_for(lambda: len(client.frames) >= n_before + 10)  # the stream went on

        client.send(type="prompt", text="a snowy night")  # first theme word wins: snow
        await client.wait_for(lambda: dominant_is(client.frames[-1], "snow"), timeout=5)
        await client.wait_for(lambda: any(m["type"] == "stats" for m in client.msgs), timeout=5)
        stats = next(m for m in client.msgs if m["type"] == "stats")
        for k in ("fps_target", "fps_actual", "drop_pct", "bitrate_kbps", "kv_bytes", "model_ms", "encode_ms"):
            assert k in stats


def newest_frame_id(client):
    return max((m["frame_id"] for m in client.msgs if m["type"] == "frame"), default=-1)


async def test_real_model_streams_at_rate_and_acks(micro_ckpt):  # default timeout: the fixture trains first
    from worldlab.model import load_model

    async with streaming(load_model(micro_ckpt[0]), prompt="a walk in the forest", quality="high") as (client, _):
        await client.wait_for(lambda: len(client.frames) >= 10 and newest_frame_id(client) >= 0, timeout=20)
        loop = asyncio.get_running_loop()
        n0, id0, t0 = len(client.frames), newest_frame_id(client), loop.time()
        await asyncio.sleep(2.0)
        dt = loop.time() - t0
        video_fps, model_fps = (len(client.frames) - n0) / dt, (newest_frame_id(client) - id0) / dt
        assert 25 <= video_fps <= 35 and 25 <= model_fps <= 35, (video_fps, model_fps)  # target 30, loaded CI
        frame = client.frames[-1]
        assert frame.shape == (384, 384, 3)  # the 64x64 frame upscaled to the pinned high (top) rung
        assert frame.reshape(-1, 3).std(0).max() > 4  # not one flat colour

        seq = client.send(type="action", keys=["right"], t=0)
        await client.wait_for(lambda: any(m["type"] == "ack" and m["seq"] == seq for m in client.msgs))
        ack = next(m for m in client.msgs if m["type"] == "ack" and m["seq"] == seq)
        assert id0 < ack["frame_id"] <= newest_frame_id(client) + 2  # a current frame, not an old or future one
        await client.wait_for(lambda: newest_frame_id(client) >= ack["frame_id"])

        await client.wait_for(lambda: any(m["type"] == "stats" and m["model_ms"] for m in client.msgs), timeout=5)
        stats = [m for m in client.msgs if m["type"] == "stats"][-1]
        assert stats["fps_target"] == 30 and 0 < stats["model_ms"] < 1000 / 30  # real work, inside the budget
        assert stats["kv_bytes"] > 0  # a real model keeps a KV cache (the oracle reports 0)

