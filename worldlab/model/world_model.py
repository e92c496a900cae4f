"""TransformerWorldModel: the WorldModel protocol over WorldTransformer with per-session KV caches.

One `step` runs the linear layers of B sessions as one batch (micro-batching); attention runs per
session against its own cache (sink + window, uncompressed / FP8 / NVFP4). The step's tensor part is
graph-safe (frame ids and slots as device tensors): on CUDA it is replayed from a CUDA graph (cuda_graphs.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from worldlab import env
from worldlab.config import ModelConfig, Toggles
from worldlab.kernels.kv_cache import KINDS, make_kv_cache
from worldlab.model import cuda_graphs
from worldlab.model.streaming import attend_each, check_frames, evict, fill_caches, note_frames
from worldlab.model.transformer import WorldTransformer, age_values, rotate_tail


@dataclass
class SessionState:
    prompt: str
    theme: str
    caches: list
    next_id: int = 0  # frame id the next block gets
    last: torch.Tensor | None = None  # (3, 4) observation boxes of the newest frame, not yet in the cache
    history: dict = field(default_factory=dict)  # frame id -> (observation boxes, action id) of cached frames
    frames_generated: int = 0


def _with_sink(cfg: ModelConfig, sink: int | None) -> ModelConfig:
    """cfg with the attention sink overridden (None keeps the trained one).

    Only 0..cfg.sink: the parallel rebuild (prefill, recache) masks with the net's trained sink, and a frame
    between the new and the trained sink is in the history only while it is inside the window, where both
    masks and ALiBi ages agree; a larger sink would keep frames the rebuild would treat differently."""
    if sink is None:
        return cfg
    if isinstance(sink, bool) or not isinstance(sink, int) or not 0 <= sink <= cfg.sink:
        raise ValueError(f"sink must be an int in 0..{cfg.sink} (the trained sink), got {sink!r}")
    return replace(cfg, sink=sink)


class TransformerWorldModel:
    """WorldModel protocol implementation; build with worldlab.model.load_model."""

    def __init__(self, net: WorldTransformer, cfg: ModelConfig, *, weights="fp32", kv="none", window="short",
                 device="cpu", checkpoint_hash: str = "", sink: int | None = None, checkpoint_path=None):
        if kv not in KINDS:
            raise ValueError(f"kv must be one of {KINDS}, got {kv!r}")
        self.net, self.cfg = net.eval(), _with_sink(cfg, sink)
        self.weights, self.kv, self.window_name = weights, kv, window
        self.toggles = Toggles(weights, window, kv)  # what the widget and the served page show as current
        self.window = cfg.window(window)
        self.device = torch.device(device)
        self.frame_shape = (cfg.image_size, cfg.image_size, 3)
        self.checkpoint_hash = checkpoint_hash
        self.checkpoint_path = checkpoint_path  # the file it came from: other toggle variants load it again
        # A decoded corner past the frame edge would draw a clipped sprite: keep every sprite whole.
        self._max_pos = (cfg.image_size - net.codec.sprite_size)[:, None]  # (3, 1)
        self.cuda_graphs = cuda_graphs.enabled_by_default()  # `--cuda-graphs off` sets it False
        self.graphs = cuda_graphs.StepGraphs(self._positions, self.device) if self.device.type == "cuda" else None

    def describe(self) -> dict:
        graphs = "n/a (cpu)" if self.graphs is None else self.graphs.describe() if self.cuda_graphs else "off"
        return {"model": "tiny", "preset": self.cfg.name, "weights": self.weights, "kv": self.kv, "window": self.window_name,
                "window_frames": self.window, "sink": self.cfg.sink, "checkpoint": self.checkpoint_hash,
                "cuda_graphs": graphs}

    # -- protocol ------------------------------------------------------------------------------
    def init_state(self, prompt: str) -> SessionState:
        theme = env.theme_for_prompt(prompt)
        c = self.cfg
        caches = [make_kv_cache(self.kv, batch=1, heads=c.n_heads, head_dim=c.head_dim,
                                tokens_per_frame=c.tokens_per_frame, sink=c.sink, window=self.window,
                                device=self.device) for _ in range(c.n_layers)]
        return SessionState(prompt=prompt, theme=theme, caches=caches)

    @torch.inference_mode()
    def prefill(self, state: SessionState, frames: np.ndarray, actions: Sequence) -> None:
        """frames (T, H, W, 3) uint8 ground truth; actions: the T-1 actions between consecutive frames."""
        frames = self._check_frames(frames)
        if len(actions) != len(frames) - 1:
            raise ValueError(f"prefill needs len(actions) == len(frames) - 1, got {len(actions)} and {len(frames)}")
        ids = [env.action_id(a) for a in actions]
        self.reset(state)
        obs = self.net.codec.tokenize(torch.as_tensor(frames, device=self.device))  # (T, 3, 4)
        for f in range(len(frames) - 1):
            state.history[f] = (obs[f], ids[f])
        state.next_id = len(frames) - 1
        state.last = obs[-1]
        self._evict(state)
        self._rebuild(state)

    @torch.inference_mode()
    def step(self, states: Sequence[SessionState], actions: Sequence) -> np.ndarray:
        if len(states) != len(actions):
            raise ValueError(f"step got {len(states)} states but {len(actions)} actions")
        if not states:
            return np.zeros((0, *self.frame_shape), np.uint8)
        for s in states:
            if s.last is None:
                raise ValueError("step before prefill: call prefill (or start_session) first")
        act = torch.tensor([env.action_id(a) for a in actions], device=self.device)
        inputs = torch.stack([s.last for s in states])  # (B, 3, 4)
        themes = torch.tensor([env.THEMES.index(s.theme) for s in states], device=self.device)
        ids, slots = self._targets(states)
        if self.graphs is not None and self.cuda_graphs:
            pos = self.graphs.run(states, inputs, act, themes, ids, slots)  # (B, 3, 2)
        else:
            pos = self._positions(states, inputs, act, themes, self._index(ids), self._index(slots))
        self._note_frames(states)
        classes = self.net.codec.compose(pos)  # (B, H, W)
        obs = self.net.codec.observe(classes)  # (B, 3, 4): what the next step sees of these frames
        for i, s in enumerate(states):
            s.history[s.next_id] = (inputs[i], int(act[i]))
            s.next_id += 1
            s.frames_generated += 1
            s.last = obs[i]
            self._evict(s)
        return self.net.codec.paint(classes, themes).cpu().numpy()

    def recache(self, state: SessionState, prompt: str) -> None:
        """Prompt switch: recompute every cached frame's K/V under the new prompt's conditioning."""
        state.prompt, state.theme = prompt, env.theme_for_prompt(prompt)
        self._rebuild(state)

    def reset(self, state: SessionState) -> None:
        for c in state.caches:
            c.reset()
        state.history.clear()
        state.next_id, state.last, state.frames_generated = 0, None, 0

    def kv_bytes(self, state: SessionState) -> int:
        return sum(c.kv_bytes() for c in state.caches)

    # -- internals -----------------------------------------------------------------------------
    def _check_frames(self, frames) -> np.ndarray:
        return check_frames(frames, self.frame_shape)

    def _evict(self, s: SessionState) -> None:
        evict(s.history, s.next_id - 1, self.cfg.sink, self.window)

    @torch.inference_mode()
    def _rebuild(self, s: SessionState) -> None:
        """Recompute the caches from the stored observations in one parallel pass (same mask as streaming)."""
        for c in s.caches:
            c.reset()
        if not s.history:
            return
        ids = sorted(s.history)
        obs = torch.stack([s.history[f][0] for f in ids])[None]  # (1, F, 3, 4)
        acts = torch.tensor([[s.history[f][1] for f in ids]], device=self.device)
        themes = torch.full_like(acts, env.THEMES.index(s.theme))
        fid = torch.tensor(ids, device=self.device)
        _, kvs = self.net.forward_seq(obs, acts, themes, self.window, frame_ids=fid, return_kv=True)
        fill_caches(s.caches, kvs, ids, self.cfg.tokens_per_frame)

    def _targets(self, states) -> tuple[list[int], list[int]]:
        """Each session's new frame id and the cache slot it will occupy (host ints, decided before the block)."""
        ids = [s.next_id for s in states]
        return ids, [s.caches[0].slot_for(f) for s, f in zip(states, ids)]

    def _index(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def _note_frames(self, states) -> None:
        note_frames(states)

    def _advance(self, states, inputs: torch.Tensor, act: torch.Tensor, themes: torch.Tensor) -> torch.Tensor:
        """The eager streaming block: next-position logits (B, 3, 2, P), caches written and the frame noted."""
        ids, slots = self._targets(states)
        logits = self._logits(states, inputs, act, themes, self._index(ids), self._index(slots))
        self._note_frames(states)
        return logits

    def _positions(self, states, inputs: torch.Tensor, act: torch.Tensor, themes: torch.Tensor,
                   ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """One block for each session -> its sprites' next top-left corners (B, 3, 2), kept inside the frame."""
        logits = self._logits(states, inputs, act, themes, ids, slots)
        return torch.minimum(self.net.positions(logits), self._max_pos)

    def _logits(self, states, inputs: torch.Tensor, act: torch.Tensor, themes: torch.Tensor,
                ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """One block for each session: inputs (B, 3, 4) -> next-position logits (B, 3, 2, P); ids/slots (B,)
        int64 device tensors: each session's new frame id and its cache slot. Graph-safe: no host values and
        no checks in here (step validated everything), so CUDA can record it once and replay it."""
        net = self.net
        x = net.embed(inputs[:, None], act[:, None], themes[:, None], ids[:, None])[:, 0]  # (B, 3, d)
        rot = net.age_rotation(ids[:, None], ids[:, None])  # cos, sin, keep (B, 1, 3, .) or None
        for layer, blk in enumerate(net.blocks):
            q, k, v = blk.split_qkv(x)  # each (B, H, 3, Dh)
            if rot is not None:  # the cache holds values rotated by their frame's clock (as forward_seq's)
                v = age_values(v, *rot)
            attn = attend_each(states, layer, q, k, v, slots, ids, net.slopes)
            if rot is not None:  # un-rotate by the query frame's clock: each value read is turned by -age
                attn = rotate_tail(attn, rot[0], -rot[1])
            x = blk.finish(x, attn)
        return net.heads(x)
