"""What every block-causal world model here does with its per-session KV caches: keep the sink + window of
frames, refill the caches from one parallel pass, and write + attend each session's newest block.

The sprite transformer (world_model.py) and the DOOM model (doom/world_model.py) share these, so their
streaming paths cannot drift apart from each other or from the parallel pass they are tested against.
"""

from __future__ import annotations

import numpy as np
import torch


def check_frames(frames, frame_shape) -> np.ndarray:
    """frames as a uint8 array (T >= 2, *frame_shape); one-line ValueError otherwise."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != tuple(frame_shape) or len(frames) < 2:
        raise ValueError(f"frames must be uint8 (T >= 2, {tuple(frame_shape)}), got {frames.dtype} {frames.shape}")
    return frames


def evict(history: dict, newest: int, sink: int, window: int) -> None:
    """Drop from `history` (frame id -> inputs) every frame neither in the sink nor among the window's newest."""
    for f in [f for f in history if f >= sink and newest - f >= window]:
        del history[f]


def fill_caches(caches, kvs, ids, tokens_per_frame: int) -> None:
    """Reset each layer's cache and append the frames `ids` from a parallel pass's per-layer (k, v) (1, H, F*T, D)."""
    T = tokens_per_frame
    for c, (k, v) in zip(caches, kvs):
        c.reset()
        for j, f in enumerate(ids):
            c.append_frame(k[:, :, j * T:(j + 1) * T], v[:, :, j * T:(j + 1) * T], frame_id=f)


def attend_each(states, layer: int, q, k, v, slots, ids, slopes) -> torch.Tensor:
    """Write session i's block (k[i], v[i]) into its layer cache at its slot and attend q[i] to that cache
    -> (B, H, T, D). Attention runs per session (each has its own cache); the linears around it are batched."""
    outs = []
    for i, s in enumerate(states):
        cache = s.caches[layer]
        cache.write_at(k[i:i + 1], v[i:i + 1], slots[i:i + 1], ids[i:i + 1])
        outs.append(cache.attend_at(q[i:i + 1], ids[i:i + 1], slopes))
    return torch.cat(outs)


def note_frames(states) -> None:
    """Tell every cache that each session's newest frame id is taken (the ring advances)."""
    for s in states:
        for c in s.caches:
            c.note_frame(s.next_id)
