"""A third-party-style WorldModel for the plug-in tests: the view pans one pixel per held arrow key.

Deterministic and cheap, so a test can say exactly which frame it must produce."""

from __future__ import annotations

import numpy as np

from worldlab import env

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
