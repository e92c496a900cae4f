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


def describe(model) -> dict:
    """What a model says it is: its optional describe() (weights, toggles, checkpoint hash), with `model` set
    to its plug-in's name (or class name) when it does not say. Records, /healthz and results use this."""
    out = dict(getattr(model, "describe", dict)())
    plugin = getattr(model, "plugin", None)
    out.setdefault("model", plugin.name if plugin is not None else type(model).__name__)
    return out
