"""`--model doom-engine`: the real game (ViZDoom + Freedoom2) served through the WorldModel protocol.

Like `oracle` it is a ground truth with no weights: the served page and the widget can play the real thing,
and beside it the learned DOOM model from the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from worldlab import doom
from worldlab.env import normalize_keys


@dataclass
class DoomEngineState:
    world: doom.DoomWorld
    prompt: str


class DoomEngine:
    frame_shape = doom.FRAME_SHAPE
    world = "doom"  # which ground truth it belongs to: eval scores it against the DOOM game

    def __init__(self, map: str = doom.DEFAULT_MAP, seed: int = 0):
        self.map, self.seed = doom.check_map(map), seed
        doom.vizdoom()  # refuse at build time, in one line, when vizdoom is missing

    def describe(self) -> dict:
        return {"model": "doom-engine", "map": self.map, "weights": "n/a", "kv": "none", "window": "n/a"}

    def init_state(self, prompt: str) -> DoomEngineState:
        return DoomEngineState(doom.DoomWorld(self.map, self.seed, doom.style_for_prompt(prompt)), prompt)

    def context(self, prompt: str, seed: int, n: int) -> tuple[np.ndarray, list]:
        """n ground-truth frames of this map under the explorer and the n - 1 keys between them (a session's
        prefill; worldlab.model.start_session uses it instead of the sprite world's)."""
        return doom.context(self.map, prompt, seed, n)

    def prefill(self, state: DoomEngineState, frames: np.ndarray, actions: Sequence) -> None:
        """Replay the keys from the episode the first frame starts (known when a DoomWorld here started it, as
        for `context` and eval's episodes); frames from elsewhere replay from this engine's own seed."""
        origin = doom.origin_of(frames[0]) if len(frames) else None
        state.world.reset(origin[1] if origin and origin[0] == self.map else self.seed)
        for a in actions:
            state.world.step(a)

    def step(self, states: Sequence[DoomEngineState], actions: Sequence) -> np.ndarray:
        if len(states) != len(actions):
            raise ValueError(f"step got {len(states)} states but {len(actions)} actions")
        for a in actions:
            normalize_keys(a)  # validate all before mutating any
        if not states:
            return np.zeros((0, *self.frame_shape), np.uint8)
        return np.stack([s.world.step(a) for s, a in zip(states, actions)])

    def recache(self, state: DoomEngineState, prompt: str) -> None:
        state.world.set_style(doom.style_for_prompt(prompt))
        state.prompt = prompt

    def reset(self, state: DoomEngineState) -> None:
        state.world.reset()

    def kv_bytes(self, state: DoomEngineState) -> int:
        return 0


def doom_engine(*, toggles=None, device: str = "cpu", checkpoint=None) -> DoomEngine:
    """The real DOOM game (ViZDoom + Freedoom2, my_way_home): ground truth, no weights."""
    if checkpoint is not None:
        raise ValueError("the doom-engine model takes no checkpoint")
    return DoomEngine()


doom_engine.supports = {"weights": ("fp32",), "window": ("short",), "kv": ("none",)}
