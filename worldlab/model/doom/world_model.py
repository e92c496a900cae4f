"""DoomWorldModel: the WorldModel protocol over the DOOM tokenizer + dynamics, with per-session KV caches.

A step encodes nothing it has not made: the newest frame's tokens (from the tokenizer's encoder on the
model's own output) join the cache, the transformer predicts flow / keep / new latent for the next frame,
and the next frame is composed in pixels. Linear layers of B sessions run as one batch (micro-batching).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from worldlab import doom, env
from worldlab.config import Toggles
from worldlab.kernels.kv_cache import KINDS, make_kv_cache
from worldlab.model.doom.dynamics import DoomDynamics, compose, tokens, upsample
from worldlab.model.doom.tokenizer import DoomTokenizer, to_frames, to_tensor
from worldlab.model.streaming import attend_each, check_frames, evict, fill_caches, note_frames

WARP_MODES = ("nearest", "bilinear")


@dataclass
class DoomState:
    prompt: str
    style: str
    caches: list
    next_id: int = 0  # frame id the newest frame gets when it enters the cache
    last: torch.Tensor | None = None  # (3, H, W) newest frame in [0, 1]: what the next warp reads
    last_z: torch.Tensor | None = None  # (T, C) its tokens, not yet in the cache
    carry: torch.Tensor | None = None  # (2, H, W) sub-pixel flow not yet applied (nearest warps)
    noise: torch.Generator | None = None  # the sampler's draws: one stream per session, seeded at reset
    history: dict = field(default_factory=dict)  # frame id -> (tokens (T, C), action id) of cached frames


class DoomWorldModel:
    """Build with worldlab.model.doom.load_doom (or --model doom)."""

    frame_shape = doom.FRAME_SHAPE
    world = "doom"

    def __init__(self, net: DoomDynamics, tok: DoomTokenizer, *, weights="fp32", kv="none", window="short",
                 device="cpu", checkpoint_hash: str = "", warp_mode: str = "nearest", map: str = doom.DEFAULT_MAP,
                 grade=None, sampler=None, sample_seed: int = 0):
        if kv not in KINDS:
            raise ValueError(f"kv must be one of {KINDS}, got {kv!r}")
        if warp_mode not in WARP_MODES:
            raise ValueError(f"warp_mode must be one of {WARP_MODES}, got {warp_mode!r}")
        self.net, self.tok, self.cfg = net.eval(), tok.eval(), net.cfg
        self.weights, self.kv, self.window_name, self.warp_mode = weights, kv, window, warp_mode
        self.toggles = Toggles(weights, window, kv)
        self.window = self.cfg.window(window)
        self.device = torch.device(device)
        self.checkpoint_hash, self.map = checkpoint_hash, map
        self.grade = None if grade is None else grade.to(self.device).eval()  # StyleGrade: the prompt switch's look
        self.sampler = None if sampler is None else sampler.to(self.device).eval()  # LatentSampler: draws, not means
        self.sample_seed = sample_seed

    def describe(self) -> dict:
        return {"model": "doom", "weights": self.weights, "kv": self.kv, "window": self.window_name,
                "window_frames": self.window, "sink": self.cfg.sink, "warp": self.warp_mode,
                "checkpoint": self.checkpoint_hash, "map": self.map, "grade": self.grade is not None,
                "sampler": self.sampler.cfg.sample_steps if self.sampler is not None else 0}

    # -- protocol ------------------------------------------------------------------------------
    def init_state(self, prompt: str) -> DoomState:
        c = self.cfg
        caches = [make_kv_cache(self.kv, batch=1, heads=c.n_heads, head_dim=c.head_dim,
                                tokens_per_frame=c.tokens_per_frame, sink=c.sink, window=self.window,
                                device=self.device) for _ in range(c.n_layers)]
        return DoomState(prompt=prompt, style=doom.style_for_prompt(prompt), caches=caches)

    def context(self, prompt: str, seed: int, n: int) -> tuple[np.ndarray, list]:
        """n true frames of the map under the explorer (seeded) and the keys between them: a session's prefill."""
        return doom.context(self.map, prompt, seed, n)

    @torch.inference_mode()
    def prefill(self, state: DoomState, frames: np.ndarray, actions: Sequence) -> None:
        frames = check_frames(frames, self.frame_shape)
        if len(actions) != len(frames) - 1:
            raise ValueError(f"prefill needs len(actions) == len(frames) - 1, got {len(actions)} and {len(frames)}")
        ids = [env.action_id(a) for a in actions]
        self.reset(state)
        x = to_tensor(frames, self.device)  # (T, 3, H, W)
        z = tokens(self.tok.encode(x))  # (T, 48, C)
        for f in range(len(frames) - 1):
            state.history[f] = (z[f], ids[f])
        state.next_id, state.last, state.last_z = len(frames) - 1, x[-1], z[-1]
        state.carry = torch.zeros(2, *self.frame_shape[:2], device=self.device)
        self._evict(state)
        self._rebuild(state)

    @torch.inference_mode()
    def step(self, states: Sequence[DoomState], actions: Sequence) -> np.ndarray:
        if len(states) != len(actions):
            raise ValueError(f"step got {len(states)} states but {len(actions)} actions")
        if not states:
            return np.zeros((0, *self.frame_shape), np.uint8)
        if any(s.last is None for s in states):
            raise ValueError("step before prefill: call prefill (or start_session) first")
        act = torch.tensor([env.action_id(a) for a in actions], device=self.device)
        flow, keep, znew = self._predict(states, self._advance(states, act))
        frames = self._render(states, flow, keep, znew)  # (B, 3, H, W), already on the uint8 grid
        z = tokens(self.tok.encode(frames))  # (B, 48, C): what the next step sees of these frames
        for i, s in enumerate(states):
            s.history[s.next_id] = (s.last_z, int(act[i]))
            s.next_id += 1
            s.last, s.last_z = frames[i], z[i]
            self._evict(s)
        return to_frames(frames)

    def recache(self, state: DoomState, prompt: str) -> None:
        """Prompt switch: recompute every cached frame's K/V under the new style's conditioning, and (with a
        grade) redraw the newest frame in the new style, so what the warp carries forward has the new look."""
        old, state.prompt, state.style = state.style, prompt, doom.style_for_prompt(prompt)
        with torch.inference_mode():
            if self.grade is not None and state.last is not None and old != state.style:
                state.last = self.grade.apply(state.last, old, state.style)
                state.last_z = tokens(self.tok.encode(state.last[None]))[0]
            self._rebuild(state)

    def reset(self, state: DoomState) -> None:
        for c in state.caches:
            c.reset()
        state.history.clear()
        state.next_id, state.last, state.last_z, state.carry = 0, None, None, None
        state.noise = torch.Generator(device=self.device).manual_seed(self.sample_seed)

    def kv_bytes(self, state: DoomState) -> int:
        return sum(c.kv_bytes() for c in state.caches)

    # -- internals -----------------------------------------------------------------------------
    def _style_ids(self, states) -> torch.Tensor:
        return torch.tensor([doom.STYLES.index(s.style) for s in states], device=self.device)

    def _evict(self, s: DoomState) -> None:
        evict(s.history, s.next_id - 1, self.cfg.sink, self.window)

    def _rebuild(self, s: DoomState) -> None:
        """Recompute the caches from the stored tokens in one parallel pass (the streaming mask and ages)."""
        for c in s.caches:
            c.reset()
        if not s.history:
            return
        ids = sorted(s.history)
        z = torch.stack([s.history[f][0] for f in ids])[None]  # (1, F, T, C)
        acts = torch.tensor([[s.history[f][1] for f in ids]], device=self.device)
        styles = torch.full_like(acts, doom.STYLES.index(s.style))
        _, kvs = self.net.forward_seq(z, acts, styles, self.window, frame_ids=torch.tensor(ids, device=self.device),
                                      return_kv=True)
        fill_caches(s.caches, kvs, ids, self.cfg.tokens_per_frame)

    def _advance(self, states, act: torch.Tensor):
        """One block per session (its newest frame's tokens + the held keys): caches written, frame noted ->
        the last block's tokens (B, T, d)."""
        net = self.net
        ids = torch.tensor([s.next_id for s in states], device=self.device)
        slots = torch.tensor([s.caches[0].slot_for(s.next_id) for s in states], device=self.device)
        z = torch.stack([s.last_z for s in states])  # (B, T, C)
        x = net.embed(z[:, None], act[:, None], self._style_ids(states)[:, None])[:, 0]  # (B, T, d)
        for layer, blk in enumerate(net.blocks):
            q, k, v = blk.split_qkv(x)  # each (B, H, T, Dh)
            x = blk.finish(x, attend_each(states, layer, q, k, v, slots, ids, net.slopes))
        note_frames(states)
        return x

    def _predict(self, states, x: torch.Tensor):
        """The last block's tokens -> flow (B, 2, gh, gw), keep logits (B, 1, gh, gw) and the new latent
        (B, C, gh, gw): the regression head's mean, or with a sampler a draw from each session's own noise."""
        flow, keep, znew = self.net.heads(x)
        if self.sampler is not None:
            noise = torch.stack([torch.randn(znew.shape[1:], generator=s.noise, device=self.device) for s in states])
            znew = self.sampler.sample(self.net.condition(x), znew, noise)
        return flow, keep, znew

    def _render(self, states, flow, keep, znew) -> torch.Tensor:
        """Compose each session's next frame from its newest frame; nearest warps move whole pixels and carry the
        sub-pixel rest to the next step, so the picture stays sharp over any number of steps."""
        prev = torch.stack([s.last for s in states])  # (B, 3, H, W)
        flow_px = upsample(flow)  # (B, 2, H, W)
        if self.warp_mode == "nearest":
            flow_px = flow_px + torch.stack([s.carry for s in states])
            whole = torch.round(flow_px)
            for i, s in enumerate(states):
                s.carry = flow_px[i] - whole[i]
            flow_px = whole
        frames, _keep = compose(prev, flow_px, keep, self.tok.decode(znew), mode=self.warp_mode)
        return torch.round(frames.clamp(0, 1) * 255) / 255  # the uint8 frame the stream shows is what comes next


# W4A4 keeps 4-bit weights 4-bit: its low-rank branch is 1/32 of the width (rank 4 at d_model 128), stored in bf16.
def doom_recipes(cfg) -> dict:
    from worldlab.kernels.linear import QuantRecipe

    return {"w8a8": ("fp8", QuantRecipe()),
            "w4a4": ("nvfp4", QuantRecipe(smooth_alpha=0.5, lowrank_rank=cfg.d_model // 32, lowrank_dtype="bf16"))}


def load_doom(checkpoint=None, *, weights="fp32", kv="none", window="short", device="cpu",
              warp_mode="nearest") -> DoomWorldModel:
    """The DOOM world model from a checkpoint (default: the shipped one) with the three toggles applied."""
    from worldlab.model.doom.checkpoint import load
    from worldlab.model.quantize import quantize_model

    Toggles(weights, window, kv)  # one clear error for a bad value, before the checkpoint loads
    ck = load(checkpoint, device=device)
    if weights != "fp32":
        quantize_model(ck.net, weights, ck.calib, recipes=doom_recipes(ck.net.cfg))
    return DoomWorldModel(ck.net, ck.tok, weights=weights, kv=kv, window=window, device=device,
                          checkpoint_hash=ck.digest, warp_mode=warp_mode, grade=ck.grade, sampler=ck.sampler)


def doom_model(*, toggles=None, device: str = "cpu", checkpoint=None) -> DoomWorldModel:
    """The learned DOOM world model: tokenizer + block-causal transformer that warps and generates (48x64)."""
    return load_doom(checkpoint, device=device, **(toggles or Toggles()).to_dict())
