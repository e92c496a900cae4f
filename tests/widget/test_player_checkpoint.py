"""A Player given a model follows that model: its traits start at the model's own toggles, toggle
variants reload the model's own checkpoint (never the shipped one), and torch's process-wide thread count
follows worldlab.threads' rule (one thread) unless asked (Player(threads=N))."""

import threading
import time

import pytest
import torch

from worldlab.model import load_model
from worldlab.widget import Player

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))


def worker_threads():
    return [t for t in threading.enumerate() if t.name == "worldlab-model"]


def wait_for_frames(p, n=2, timeout=10.0):
    """A hot-switch prefills from the session's recent frames: let it make a few first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(p.room.session.recent) < n:
        time.sleep(0.05)


def test_toggles_reload_the_given_models_own_checkpoint(micro_ckpt):
    before = len(worker_threads())
    model = load_model(str(micro_ckpt[0]), weights="fp32")
    shipped = load_model().describe()["checkpoint"]
    assert model.checkpoint_hash and shipped and model.checkpoint_hash != shipped
    p = Player(model, prompt="a walk in the forest")
    try:
        assert (p.weights, p.window, p.kv) == ("fp32", "short", "none")
        assert p.room.model is model
        wait_for_frames(p)
        p.weights = "w4a4"  # the Python API hot-switches the live room
        m = p.room.model
        assert m is not model and m.weights == "w4a4" and m.window_name == "short" and m.kv == "none"
        assert m.checkpoint_hash == model.checkpoint_hash != shipped
        assert m.describe()["checkpoint"] == model.checkpoint_hash
        assert p.weights == "w4a4" and p.pool.checkpoint == model.checkpoint_path
        ds = p.record(0.5)
        assert ds.sizes["frame"] >= 10 and ds.attrs["weights"] == "w4a4"
    finally:
        p.close()
    assert len(worker_threads()) == before


def test_traits_follow_the_given_models_toggles(micro_ckpt):
    model = load_model(str(micro_ckpt[0]), window="long", kv="fp8")
    p = Player(model, prompt="a walk in the forest")
    try:
        assert (p.weights, p.window, p.kv) == ("fp32", "long", "fp8")
        assert p.room.model is model and len(p.pool.variants) == 1
        assert p.record(0.3).attrs["window"] == "long"
    finally:
        p.close()


def test_threads_follow_the_rule_unless_asked(micro_ckpt):
    """Model steps run on worldlab.threads' one thread (a busy laptop must not stall the player); threads=N
    insists, and loading a toggle variant does not change it again."""
    original = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        p = Player(str(micro_ckpt[0]), prompt="a walk in the forest")
        try:
            assert torch.get_num_threads() == 1
        finally:
            p.close()
        p = Player(str(micro_ckpt[0]), prompt="a walk in the forest", threads=2)
        try:
            assert torch.get_num_threads() == 2
            wait_for_frames(p)
            p.window = "long"  # loads a second variant
            assert p.room.model.window_name == "long"
            assert torch.get_num_threads() == 2
        finally:
            p.close()
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            Player(str(micro_ckpt[0]), threads=0)
    finally:
        torch.set_num_threads(original)
