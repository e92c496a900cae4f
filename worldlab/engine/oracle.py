"""EnvOracle: the WorldModel protocol served by the ground-truth environment itself.

It isolates transport cost from model cost in benchmarks, and serves when no checkpoint is available.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from worldlab import env


@dataclass
class OracleState:
    world: env.World
    prompt: str


class EnvOracle:
    frame_shape = (env.SIZE, env.SIZE, 3)

    def __init__(self, seed: int = 0):
        self.seed = seed

    def describe(self) -> dict:
        return {"model": "oracle", "weights": "n/a", "kv": "none", "window": "n/a"}

    def init_state(self, prompt: str) -> OracleState:
        return OracleState(env.World(self.seed, env.theme_for_prompt(prompt)), prompt)

    def prefill(self, state: OracleState, frames: np.ndarray, actions: Sequence) -> None:
        state.world.reset()
        for a in actions:
            state.world.step(a)

    def step(self, states: Sequence[OracleState], actions: Sequence) -> np.ndarray:
        if len(states) != len(actions):
            raise ValueError(f"step got {len(states)} states but {len(actions)} actions")
        for a in actions:
            env.normalize_keys(a)  # validate all before mutating any
        return np.stack([s.world.step(a) for s, a in zip(states, actions)]) if states else \
            np.zeros((0, *self.frame_shape), np.uint8)

    def recache(self, state: OracleState, prompt: str) -> None:
        state.world.set_theme(env.theme_for_prompt(prompt))
        state.prompt = prompt

    def reset(self, state: OracleState) -> None:
        state.world.reset()

    def kv_bytes(self, state: OracleState) -> int:
        return 0


def oracle(*, toggles=None, device: str = "cpu", checkpoint=None) -> EnvOracle:
    """The ground-truth environment itself: no weights, window or KV cache (isolates transport cost)."""
    if checkpoint is not None:
        raise ValueError("the oracle model takes no checkpoint")
    return EnvOracle()


oracle.supports = {"weights": ("fp32",), "window": ("short",), "kv": ("none",)}
