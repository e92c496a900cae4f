"""The no-objects painter: a WorldModel with no learning, a baseline every sprite-world model must beat.

It paints the theme's static plate (checkerboard and pillar), moves the agent by the keys exactly as the
environment does, and never draws the objects (issue 24: it scores ~27.5 dB on the README's seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from worldlab import env

_OCCLUDER, _AGENT = 2, 3  # rows of env.palette(theme)


@dataclass
class PainterState:
    theme: str
    agent: np.ndarray  # (x, y) top-left, as env.World.agent


class NoObjectsPainter:
    frame_shape = (env.SIZE, env.SIZE, 3)

    def describe(self) -> dict:
        return {"model": "painter", "weights": "n/a", "kv": "none", "window": "n/a"}

    def init_state(self, prompt: str) -> PainterState:
        return PainterState(env.theme_for_prompt(prompt), np.array([env.SIZE // 2, env.SIZE // 2]))

    def prefill(self, state: PainterState, frames: np.ndarray, actions: Sequence) -> None:
        """The agent's top-left corner in the last frame (drawn last, so never hidden); kept if absent."""
        mask = (frames[-1] == env.palette(state.theme)[_AGENT]).all(-1)
        if mask.any():
            ys, xs = np.nonzero(mask)
            state.agent = np.array([xs.min(), ys.min()])

    def step(self, states: Sequence[PainterState], actions: Sequence) -> np.ndarray:
        if len(states) != len(actions):
            raise ValueError(f"step got {len(states)} states but {len(actions)} actions")
        for a in actions:
            env.normalize_keys(a)  # validate all before mutating any
        return np.stack([self._paint(s, a) for s, a in zip(states, actions)]) if states else \
            np.zeros((0, *self.frame_shape), np.uint8)

    def _paint(self, state: PainterState, keys) -> np.ndarray:
        state.agent = np.clip(state.agent + env.STEP_PX * np.array(env.action_delta(keys)), 0, env.SIZE - env.AGENT)
        colours = env.palette(state.theme)
        img = env.background(state.theme)
        img[:, env.OCCLUDER_X[0]:env.OCCLUDER_X[1]] = colours[_OCCLUDER]
        x, y = state.agent
        img[y:y + env.AGENT, x:x + env.AGENT] = colours[_AGENT]
        return img

    def recache(self, state: PainterState, prompt: str) -> None:
        state.theme = env.theme_for_prompt(prompt)

    def reset(self, state: PainterState) -> None:
        state.agent = np.array([env.SIZE // 2, env.SIZE // 2])

    def kv_bytes(self, state: PainterState) -> int:
        return 0


def painter(*, toggles=None, device: str = "cpu", checkpoint=None) -> NoObjectsPainter:
    """No-objects painter: the static plate and the key-driven agent, objects never drawn (a baseline)."""
    if checkpoint is not None:
        raise ValueError("the painter model takes no checkpoint")
    return NoObjectsPainter()


painter.supports = {"weights": ("fp32",), "window": ("short",), "kv": ("none",)}
