"""A scripted explorer for DOOM training data: forward-biased walking, random turns held for a while, and
an unstuck rule (a wall ahead -> turn away), deterministic given its seed.
"""

from __future__ import annotations

import numpy as np

from worldlab.doom.game import DoomWorld

STUCK_STEPS = 6  # forward steps with almost no movement before the explorer turns away
STUCK_DIST = 4.0  # map units covered over STUCK_STEPS below which it counts as stuck
# (keys, weight, shortest hold, longest hold): mostly walking and turning, some idling and backing up,
# so every key and every pair is seen in training.
MOVES = (
    (("up",), 0.34, 4, 20),
    (("left",), 0.13, 3, 14),
    (("right",), 0.13, 3, 14),
    (("up", "left"), 0.12, 3, 12),
    (("up", "right"), 0.12, 3, 12),
    ((), 0.07, 2, 8),
    (("down",), 0.04, 2, 6),
    (("down", "left"), 0.025, 2, 6),
    (("down", "right"), 0.025, 2, 6),
)


class Explorer:
    """explorer.next(world) -> the keys for the next step, given the world it drives."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed + 104_729)
        self._plan: list[tuple[str, ...]] = []
        self._trail: list[tuple[float, float]] = []
        self._weights = np.array([m[1] for m in MOVES]) / sum(m[1] for m in MOVES)

    def _draw(self) -> list[tuple[str, ...]]:
        keys, _w, lo, hi = MOVES[int(self.rng.choice(len(MOVES), p=self._weights))]
        return [keys] * int(self.rng.integers(lo, hi + 1))

    def _stuck(self) -> bool:
        if len(self._trail) <= STUCK_STEPS:
            return False
        (x0, y0), (x1, y1) = self._trail[-STUCK_STEPS - 1], self._trail[-1]
        return float(np.hypot(x1 - x0, y1 - y0)) < STUCK_DIST

    def next(self, world: DoomWorld) -> tuple[str, ...]:
        x, y, _angle = world.pose()
        self._trail = self._trail[-STUCK_STEPS:] + [(x, y)]
        if self._plan and "up" in self._plan[0] and self._stuck():
            turn = ("left",) if self.rng.random() < 0.5 else ("right",)
            self._plan = [turn] * int(self.rng.integers(8, 24))  # 40-120 degrees away from the wall
            self._trail.clear()
        if not self._plan:
            self._plan = self._draw()
        return self._plan.pop(0)


def context(map: str, prompt: str, seed: int, n: int) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """A session's prefill on `map`: n true frames of the seeded explorer in the prompt's style and the n - 1
    keys between them (what `model.context` returns for the DOOM models)."""
    from worldlab.doom.styles import style_for_prompt

    frames, actions, _poses = explore(map, seed, n - 1, style_for_prompt(prompt))
    return frames, actions


def explore(map: str, seed: int, steps: int, style: str = "normal") -> tuple[np.ndarray, list[tuple[str, ...]], np.ndarray]:
    """An explorer episode: frames (steps + 1, 48, 64, 3), the keys between them, poses (steps + 1, 3)."""
    world, explorer = DoomWorld(map, seed, style), Explorer(seed)
    try:
        frames, poses, actions = [world.reset()], [world.pose()], []
        for _ in range(steps):
            actions.append(explorer.next(world))
            frames.append(world.step(actions[-1]))
            poses.append(world.pose())
        return np.stack(frames), actions, np.array(poses, np.float32)
    finally:
        world.close()
