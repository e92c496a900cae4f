"""The `WorldModel` protocol the engine drives: prefill, batched step, recache, reset, kv_bytes.

Any model that implements it (the in-project transformer, the environment oracle, a larger GPU model)
plugs into the engine, server, widget and experiments without touching them.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

# Held keys are strings from this vocabulary; an empty sequence means idle. Two keys = a diagonal;
# opposite keys cancel. Anything else is a ValueError naming the bad key.
KEYS = ("up", "down", "left", "right")


@runtime_checkable
class WorldModel(Protocol):
    """A causal, action- and prompt-conditioned frame generator with per-session state."""

    frame_shape: tuple[int, int, int]  # (H, W, 3), uint8 RGB frames

    def init_state(self, prompt: str) -> Any:
        """A fresh per-session state (KV cache, frame history, prompt conditioning)."""

    def prefill(self, state: Any, frames: np.ndarray, actions: Sequence[Sequence[str]]) -> None:
        """Feed T context frames (T, H, W, 3) uint8 and the T - 1 actions between them (actions[i]: frame i -> i + 1)."""

    def step(self, states: Sequence[Any], actions: Sequence[Sequence[str]]) -> np.ndarray:
        """One frame for each of B sessions in one forward pass -> (B, H, W, 3) uint8."""

    def recache(self, state: Any, prompt: str) -> None:
        """Prompt switch without restart: recompute the cached window's KV under the new prompt."""

    def reset(self, state: Any) -> None:
        """Drop all context; the session must be prefilled again."""

    def kv_bytes(self, state: Any) -> int:
        """Real bytes held by this session's KV cache."""


METHODS = ("init_state", "prefill", "step", "recache", "reset", "kv_bytes")


class ModelError(ValueError):
    """A model that breaks the protocol (wrong type, frame shape or dtype): one line naming what was wrong."""


def conformance_error(model) -> str | None:
    """Why `model` is not a WorldModel (a missing method, a malformed frame_shape), or None when it is one."""
    missing = [m for m in METHODS if not callable(getattr(model, m, None))]
    if missing:
        return f"returned a {type(model).__name__}, not a WorldModel (it has no {', '.join(missing)})"
    shape = getattr(model, "frame_shape", None)
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3 and shape[2] == 3
            and all(isinstance(d, int) and d > 0 for d in shape)):
        return f"has frame_shape {shape!r}; the protocol wants (H, W, 3) positive ints"
    return None


def frames_error(frames, n: int, frame_shape) -> str | None:
    """Why one step's output is not n uint8 RGB frames of frame_shape, or None when it is."""
    want = (n, *tuple(frame_shape))
    if not isinstance(frames, np.ndarray):
        return f"step returned a {type(frames).__name__}; the protocol wants a uint8 numpy array {want}"
    if frames.dtype != np.uint8 or frames.shape != want:
        return f"step returned {frames.dtype} {frames.shape} frames; the protocol wants uint8 {want}"
    return None


def checked_step(model, states: Sequence[Any], actions: Sequence) -> np.ndarray:
    """model.step, with its output held to the protocol (ModelError naming the model otherwise)."""
    frames = model.step(states, actions)
    problem = frames_error(frames, len(states), model.frame_shape)
    if problem:
        raise ModelError(f"model {describe(model)['model']!r}: {problem}")
    return frames


def describe(model) -> dict:
    """What a model says it is: its optional describe() (weights, toggles, checkpoint hash), with `model` set
    to its plug-in's name (or class name) when it does not say. Records, /healthz and results use this."""
    out = dict(getattr(model, "describe", dict)())
    plugin = getattr(model, "plugin", None)
    out.setdefault("model", plugin.name if plugin is not None else type(model).__name__)
    return out
