"""The widget's Python side without a front end (as under papermill): it runs, records, snapshots,
hot-switches and closes without leaving threads or peers behind; on the oracle and on the real model path
(the micro checkpoint this session trains)."""

import threading
import time

import numpy as np
import pytest
import traitlets

from worldlab import env
from worldlab.engine.oracle import EnvOracle
from worldlab.widget import Player


def worker_threads():
    return [t for t in threading.enumerate() if t.name == "worldlab-model"]


def test_headless_player_records_and_closes_cleanly():
    before = len(worker_threads())
    p = Player(EnvOracle(seed=2), prompt="a snowy field", fps=30)
    try:
        ds = p.record(1.0)
        assert 24 <= ds.sizes["frame"] <= 34 and float(ds["fps_actual"]) >= 24
        assert (np.diff(ds["frame"].values) >= 1).all() and ds.attrs["frontend"] == "none attached"
        assert float(ds["model_ms"].median()) < 5  # the oracle is cheap
        frame = p.snapshot()
        assert frame.shape == (64, 64, 3)
        assert np.abs(frame[1, 1].astype(int) - env.background("snow")[0, 0]).max() == 0
        p.prompt = "a walk at night"  # the Python API switches the prompt like the page's prompt box
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not (p.snapshot()[1, 1] == env.background("night")[0, 0]).all():
            time.sleep(0.05)
        assert (p.snapshot()[1, 1] == env.background("night")[0, 0]).all()
        assert p.room.session.prompt == "a walk at night"
        with pytest.raises(traitlets.TraitError, match="empty"):
            p.prompt = "   "
        assert p.prompt == "a walk at night"
        st = p.stats
        assert st["fps_target"] == 30 and st["frontend"] == "none attached" and st["g2g_ms"] is None
    finally:
        p.close()
    assert p.status == "closed" and not p.hub.pcs and not p.hub.rooms
    assert len(worker_threads()) == before


def test_headless_player_on_a_real_checkpoint(micro_ckpt):
    before = len(worker_threads())
    p = Player(str(micro_ckpt[0]), prompt="a walk in the forest", fps=30)  # Player("ckpt.safetensors")
    try:
        ds = p.record(1.0)
        assert 24 <= ds.sizes["frame"] <= 34 and float(ds["fps_actual"]) >= 24
        assert (np.diff(ds["frame"].values) >= 1).all() and ds.attrs["frontend"] == "none attached"
        assert (ds["model_ms"] > 0).all() and float(ds["model_ms"].median()) < 1000 / 30  # real work, in budget
        assert ds.attrs["kv_bytes"] > 0  # a real model keeps a KV cache (the oracle reports 0)
        frame = p.snapshot()
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.reshape(-1, 3).std(0).max() > 4

        p.window = "long"  # hot-switch: a second variant loaded from the same checkpoint, no restart
        ds = p.record(0.5)
        assert ds.attrs["window"] == "long" and ds.sizes["frame"] >= 12 and (ds["model_ms"] > 0).all()
        assert len(worker_threads()) == before + 2  # one scheduler per variant
    finally:
        p.close()
    assert p.status == "closed" and not p.hub.pcs and not p.hub.rooms
    assert len(worker_threads()) == before
