"""A third-party-style WorldModel for the plug-in tests: the view pans one pixel per held arrow key.

Deterministic and cheap, so a test can say exactly which frame it must produce."""

from __future__ import annotations

import importlib.metadata

import numpy as np

from worldlab import env
from worldlab.model import registry

SHIFT = {"left": (0, 1), "right": (0, -1), "up": (1, 0), "down": (-1, 0)}  # the world moves against the camera


class PanModel:
    frame_shape = (env.SIZE, env.SIZE, 3)

    def __init__(self, device: str):
        self.device = device

    def init_state(self, prompt):
        return {"frame": env.World(0, env.theme_for_prompt(prompt)).step(()), "prompt": prompt}

    def prefill(self, state, frames, actions):
        state["frame"] = np.asarray(frames[-1], np.uint8)

    def step(self, states, actions):
        out = []
        for s, keys in zip(states, actions):
            for k in env.normalize_keys(keys):
                s["frame"] = np.roll(s["frame"], SHIFT[k], axis=(0, 1))
            out.append(s["frame"])
        return np.stack(out) if out else np.zeros((0, *self.frame_shape), np.uint8)

    def recache(self, state, prompt):
        state["prompt"] = prompt

    def reset(self, state):
        state["frame"] = np.zeros(self.frame_shape, np.uint8)

    def kv_bytes(self, state):
        return 0


def factory(*, toggles, device, checkpoint):
    """Pans the first frame with the keys (a test plug-in)."""
    return PanModel(device)


factory.supports = {"weights": ("fp32",), "kv": ("none",)}  # window: any (it has none to change)


# -- plug-ins that break the contract, one way each (tests/model/test_bad_plugins.py) -----------------------
def raising_factory(*, toggles, device, checkpoint):
    """Runs out of memory for the long window (a hot-switch that fails)."""
    if toggles.window == "long":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore driver text")
    return PanModel(device)


def not_a_model_factory(*, toggles, device, checkpoint):
    """Returns its config instead of a model."""
    return {"toggles": toggles}


class FloatPanModel(PanModel):
    def step(self, states, actions):
        return super().step(states, actions).astype(np.float32) / 255


def float_frames_factory(*, toggles, device, checkpoint):
    """Frames in [0, 1] floats instead of uint8."""
    return FloatPanModel(device)


class TiringPanModel(PanModel):
    """Right frames for `good_steps` steps of each session, then half-size ones (a bug that shows up live)."""

    good_steps = 40

    def step(self, states, actions):
        frames = super().step(states, actions)
        for s in states:
            s["n"] = s.get("n", 0) + 1
        return frames[:, ::2] if any(s["n"] > self.good_steps for s in states) else frames


def register(monkeypatch, name: str, value: str) -> None:
    """`name` registered under worldlab.models as another installed package would (entry points patched)."""
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        eps = list(real(**kw))
        if kw.get("group") == registry.GROUP:
            eps.append(importlib.metadata.EntryPoint(name, value, registry.GROUP))
        return eps

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", entry_points)
