"""The ground-truth procedural world: deterministic given (seed, theme, actions), 64x64 RGB uint8 frames.

An agent moved by held keys, two objects with hidden constant velocities that bounce off the walls and
pass behind an occluder (so a model must remember them), and themes picked by a text prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SIZE = 64
AGENT = 6  # agent side, px
OBJECT = 4  # object side, px
STEP_PX = 2  # agent speed per frame
OCCLUDER_X = (40, 47)  # columns [start, stop) of the pillar objects pass behind
CELL = 16  # background checker cell
KEYS = ("up", "down", "left", "right")
MAX_PROMPT_CHARS = 500
DEFAULT_THEME = "forest"


@dataclass(frozen=True)
class Theme:
    name: str
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # checker colors
    occluder: tuple[int, int, int]
    agent: tuple[int, int, int]
    objects: tuple[tuple[int, int, int], tuple[int, int, int]]
    words: tuple[str, ...]  # prompt words that select the theme


THEME_LIST = (
    Theme("forest", ((34, 102, 48), (44, 122, 58)), (92, 62, 36), (250, 250, 250), ((220, 60, 40), (240, 200, 40)),
          ("forest", "woods", "trees", "jungle", "green")),
    Theme("desert", ((214, 184, 120), (226, 198, 136)), (150, 110, 70), (20, 60, 200), ((40, 140, 60), (180, 40, 40)),
          ("desert", "sand", "sandy", "dunes", "dune")),
    Theme("snow", ((226, 234, 244), (206, 218, 234)), (120, 140, 160), (200, 30, 30), ((30, 90, 200), (30, 150, 90)),
          ("snow", "snowy", "ice", "icy", "winter", "arctic")),
    Theme("night", ((16, 20, 48), (26, 30, 64)), (60, 60, 90), (250, 230, 90), ((120, 220, 250), (230, 110, 220)),
          ("night", "dark", "midnight", "stars", "starry")),
)
THEMES = tuple(t.name for t in THEME_LIST)
_BY_NAME = {t.name: t for t in THEME_LIST}
_BY_WORD = {w: t.name for t in THEME_LIST for w in t.words}


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return prompt


def prompt_words(prompt: str) -> list[str]:
    return re.findall(r"[a-z]+", check_prompt(prompt).lower())


def theme_for_prompt(prompt: str) -> str:
    """The first theme word in the prompt selects the theme; a prompt naming none gets DEFAULT_THEME."""
    for word in prompt_words(prompt):
        if word in _BY_WORD:
            return _BY_WORD[word]
    return DEFAULT_THEME


def normalize_keys(keys: Sequence[str] | None) -> frozenset[str]:
    if keys is None:
        return frozenset()
    if isinstance(keys, str):
        raise ValueError(f"keys must be a list of key names, got the string {keys!r}")
    out = set()
    for k in keys:
        if k not in KEYS:
            raise ValueError(f"unknown key {k!r}; keys are {KEYS} (empty = idle)")
        out.add(k)
    return frozenset(out)


def action_delta(keys) -> tuple[int, int]:
    """(dx, dy) in {-1, 0, 1}; opposite keys cancel."""
    k = normalize_keys(keys)
    return ("right" in k) - ("left" in k), ("down" in k) - ("up" in k)


def action_id(keys) -> int:
    """One of 9 discrete actions: (dy + 1) * 3 + (dx + 1); idle is 4."""
    dx, dy = action_delta(keys)
    return (dy + 1) * 3 + (dx + 1)


N_ACTIONS = 9
ACTION_KEYS = tuple(
    tuple(k for k, on in (("up", dy < 0), ("down", dy > 0), ("left", dx < 0), ("right", dx > 0)) if on)
    for dy in (-1, 0, 1) for dx in (-1, 0, 1)
)  # ACTION_KEYS[action_id(keys)] is a canonical key list for that action


def background(theme: str) -> np.ndarray:
    """(64, 64, 3) uint8 static checkerboard of the theme's two colors."""
    t = _BY_NAME[theme]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    checker = ((yy // CELL + xx // CELL) % 2).astype(bool)
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[~checker] = t.background[0]
    img[checker] = t.background[1]
    return img


class World:
    """Deterministic world: World(seed, theme); reset() -> frame; step(keys) -> frame."""

    def __init__(self, seed: int = 0, theme: str = DEFAULT_THEME):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.set_theme(theme)
        self.reset()

    def set_theme(self, theme: str) -> None:
        if theme not in _BY_NAME:
            raise ValueError(f"unknown theme {theme!r}; themes are {THEMES}")
        self.theme = theme
        self._bg = background(theme)

    def reset(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        self.t = 0
        self.agent = np.array([rng.integers(4, 30), rng.integers(4, SIZE - AGENT - 4)])  # (x, y), left of the pillar
        self.objects = np.stack([rng.integers(2, SIZE - OBJECT - 2, size=2) for _ in range(2)])  # (2, [x, y])
        speeds = rng.integers(1, 3, size=(2, 2)) * rng.choice([-1, 1], size=(2, 2))
        self.velocities = speeds  # (2, [vx, vy]), never zero on an axis, unseen in any single frame
        return self.render()

    def place(self, agent, objects, velocities) -> np.ndarray:
        """Put the world in a given state (agent (x, y), objects [(x, y)] x 2, velocities [(vx, vy)] x 2)."""
        agent, objects, velocities = (np.array(v, dtype=np.int64) for v in (agent, objects, velocities))
        if agent.shape != (2,) or objects.shape != (2, 2) or velocities.shape != (2, 2):
            raise ValueError("place needs agent (x, y) and two (x, y) objects and two (vx, vy) velocities")
        if agent.min() < 0 or agent.max() > SIZE - AGENT or objects.min() < 0 or objects.max() > SIZE - OBJECT:
            raise ValueError(f"positions must lie inside the {SIZE}x{SIZE} frame")
        if not np.isin(np.abs(velocities), (1, 2)).all():
            raise ValueError("velocities must be +-1 or +-2 on each axis")
        self.agent, self.objects, self.velocities = agent, objects, velocities
        return self.render()

    def step(self, keys=()) -> np.ndarray:
        dx, dy = action_delta(keys)
        self.agent = np.clip(self.agent + STEP_PX * np.array([dx, dy]), 0, SIZE - AGENT)
        pos = self.objects + self.velocities
        hi = SIZE - OBJECT
        # Reflect off the walls: a position past an edge folds back and the velocity flips.
        for axis in range(2):
            low, high = pos[:, axis] < 0, pos[:, axis] > hi
            pos[low, axis] = -pos[low, axis]
            pos[high, axis] = 2 * hi - pos[high, axis]
            self.velocities[low | high, axis] *= -1
        self.objects = pos
        self.t += 1
        return self.render()

    def render(self) -> np.ndarray:
        t = _BY_NAME[self.theme]
        img = self._bg.copy()
        for (x, y), color in zip(self.objects, t.objects):
            img[y:y + OBJECT, x:x + OBJECT] = color
        img[:, OCCLUDER_X[0]:OCCLUDER_X[1]] = t.occluder  # objects pass behind the pillar
        x, y = self.agent
        img[y:y + AGENT, x:x + AGENT] = t.agent  # the agent walks in front of it
        return img

    def state(self) -> dict:
        return {"t": self.t, "theme": self.theme, "agent": tuple(int(v) for v in self.agent),
                "objects": [tuple(int(v) for v in o) for o in self.objects],
                "velocities": [tuple(int(v) for v in o) for o in self.velocities]}


def agent_center(theme: str, state: dict) -> tuple[float, float]:
    x, y = state["agent"]
    return x + AGENT / 2 - 0.5, y + AGENT / 2 - 0.5


def locate_agent(frame: np.ndarray, theme: str, tol: int = 60) -> tuple[float, float] | None:
    """Centroid (x, y) of pixels near the theme's agent color, or None when no such pixel exists."""
    color = np.array(_BY_NAME[theme].agent, dtype=np.int32)
    mask = np.abs(frame.astype(np.int32) - color).sum(-1) <= tol
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def palette(theme: str) -> np.ndarray:
    """(6, 3) uint8: every color the theme can draw."""
    t = _BY_NAME[theme]
    return np.array([*t.background, t.occluder, t.agent, *t.objects], dtype=np.uint8)


def random_actions(n: int, seed: int, hold: tuple[int, int] = (2, 8)) -> list[tuple[str, ...]]:
    """A human-like action sequence: each action held for a few frames."""
    rng = np.random.default_rng(seed + 1_000_003)
    out: list[tuple[str, ...]] = []
    while len(out) < n:
        a = int(rng.integers(0, N_ACTIONS))
        out += [ACTION_KEYS[a]] * int(rng.integers(hold[0], hold[1] + 1))
    return out[:n]


def rollout(seed: int, theme: str, actions: Sequence) -> np.ndarray:
    """Frames (len(actions) + 1, 64, 64, 3): the reset frame, then one per action."""
    w = World(seed, theme)
    frames = [w.reset()] + [w.step(a) for a in actions]
    return np.stack(frames)
