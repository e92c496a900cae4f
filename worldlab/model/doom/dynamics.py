"""The DOOM dynamics: a block-causal transformer over each frame's 6x8 latent tokens (+ action and style) that
predicts the next frame as a warp of the previous one plus what the warp cannot explain.

Per token it predicts a backward flow (where each pixel of the next frame comes from), a keep logit and a new
latent; the flow, upsampled, warps the previous frame's pixels, and the tokenizer decodes the new latent into
the pixels that are revealed (outside the old view) or not kept. Pixels move more than they change, so the
warp keeps the picture sharp where an averaged prediction would blur it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldlab.doom import FRAME_SHAPE, STYLES
from worldlab.model.transformer import Block, alibi_slopes, frame_mask

WINDOWS = ("short", "long")


@dataclass(frozen=True)
class DoomConfig:
    """Sizes and training schedule of the DOOM dynamics (saved in its checkpoint's metadata)."""

    name: str = "doom"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4  # head_dim 32: a multiple of 16 (NVFP4 KV blocks)
    mlp_ratio: int = 4
    latent: int = 16  # the tokenizer's channels per token
    grid: tuple = (6, 8)  # the tokenizer's latent grid (rows, cols)
    n_actions: int = 9
    n_styles: int = len(STYLES)
    sink: int = 1
    window_short: int = 4
    window_long: int = 16
    max_flow_px: float = 12.0  # |flow| bound; a turn is ~3.6 px a step, walking forward a few px at the edges
    # training
    # 12 frames x 48 tokens: attention is most of a training step's cost (16 frames took ~2x as long)
    seq_frames: int = 12
    batch: int = 8
    steps: int = 4000
    lr: float = 1e-3
    warmup: int = 100
    train_windows: tuple = (4, 16)
    own_passes: int = 1  # extra passes whose inputs are the model's own (detached) frames: training against drift
    own_loss_passes: int = 0  # only the last this-many own passes carry a loss (0: all); earlier ones run no-grad
    own_weight: float = 1.0  # loss weight of the deepest own pass; the passes with a loss ramp to it from 1
    reveal_weight: float = 0.02  # price of not keeping a warped pixel: generate only what the warp cannot explain
    grad_weight: float = 1.0  # L1 on image gradients beside L1 on pixels: edges, not averages
    latent_weight: float = 1.0  # MSE of the new latent against the next frame's tokens
    switch_prob: float = 0.25  # sequences whose style switches mid-way (the prompt switch has a ground truth)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def window(self, which: str) -> int:
        if which not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {which!r}")
        return self.window_long if which == "long" else self.window_short

    def to_dict(self) -> dict:
        return asdict(self)


class DoomDynamics(nn.Module):
    """forward_seq: latents (B, F, T, C), actions/styles (B, F) -> per-token heads for frames 1..F."""

    def __init__(self, cfg: DoomConfig = DoomConfig()):
        super().__init__()
        self.cfg = cfg
        d, T = cfg.d_model, cfg.tokens_per_frame
        self.inp = nn.Linear(cfg.latent, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.02)
        self.action = nn.Embedding(cfg.n_actions, d)
        self.style = nn.Embedding(cfg.n_styles, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3 + cfg.latent)  # flow x, flow y, keep logit, new latent
        self.register_buffer("slopes", alibi_slopes(cfg.n_heads), persistent=False)

    def embed(self, z: torch.Tensor, actions: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """z (B, F, T, C), actions/styles (B, F) -> tokens (B, F, T, d); a_t is the key held from frame t to t+1."""
        return self.inp(z) + self.pos + (self.action(actions) + self.style(styles))[:, :, None, :]

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (..., T, d) -> flow (..., 2, gh, gw) px, keep logits (..., 1, gh, gw), new latent (..., C, gh, gw)."""
        gh, gw = self.cfg.grid
        out = self.head(self.norm_out(h))  # (..., T, 3 + C)
        out = out.transpose(-1, -2).unflatten(-1, (gh, gw))  # (..., 3 + C, gh, gw)
        flow = torch.tanh(out[..., :2, :, :]) * self.cfg.max_flow_px
        return flow, out[..., 2:3, :, :], torch.tanh(out[..., 3:, :, :])

    def hidden_seq(self, z, actions, styles, window: int, frame_ids=None):
        """Teacher-forced parallel pass over F frames -> the last block's tokens (B, F, T, d), per-layer K/V."""
        B, Fr, T, _ = z.shape
        ids = torch.arange(Fr, device=z.device) if frame_ids is None else frame_ids
        fb = frame_mask(ids, ids, self.cfg.sink, window, self.slopes)  # (H, F, F)
        bias = fb.repeat_interleave(T, 1).repeat_interleave(T, 2)  # (H, F*T, F*T): a frame sees all of itself
        x = self.embed(z, actions, styles).reshape(B, Fr * T, -1)
        kvs = []
        for blk in self.blocks:
            x, k, v = blk.forward_seq(x, bias)
            kvs.append((k, v))
        return x.view(B, Fr, T, -1), kvs

    def forward_seq(self, z, actions, styles, window: int, frame_ids=None, return_kv: bool = False):
        """Teacher-forced parallel pass over F frames -> heads (each (B, F, ., gh, gw)) [, per-layer K/V]."""
        x, kvs = self.hidden_seq(z, actions, styles, window, frame_ids)
        out = self.heads(x)
        return (out, kvs) if return_kv else out

    def condition(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., T, d) -> the normalised tokens as a grid (..., d, gh, gw): what the latent sampler reads."""
        return self.norm_out(h).transpose(-1, -2).unflatten(-1, self.cfg.grid)


def tokens(z: torch.Tensor) -> torch.Tensor:
    """Tokenizer grid (..., C, gh, gw) -> tokens (..., gh * gw, C), row-major."""
    return z.flatten(-2).transpose(-1, -2)


def _grid(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """flow (B, 2, H, W) px -> source x, y (B, H, W) px: next frame pixel (x, y) comes from prev (x + fx, y + fy)."""
    B, _, H, W = flow.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=flow.dtype, device=flow.device),
                            torch.arange(W, dtype=flow.dtype, device=flow.device), indexing="ij")
    return xs + flow[:, 0], ys + flow[:, 1]


def warp(prev: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """prev (B, 3, H, W), per-pixel flow (B, 2, H, W) -> warped (B, 3, H, W), inside (B, 1, H, W) (1 where the
    source lies in the old view). `nearest` copies whole pixels: no resampling blur piles up over a rollout."""
    H, W = prev.shape[-2:]
    sx, sy = _grid(flow)
    inside = ((sx >= -0.5) & (sx <= W - 0.5) & (sy >= -0.5) & (sy <= H - 0.5)).to(prev.dtype)[:, None]
    grid = torch.stack([(2 * sx + 1) / W - 1, (2 * sy + 1) / H - 1], -1)  # align_corners=False coordinates
    return F.grid_sample(prev, grid, mode=mode, padding_mode="border", align_corners=False), inside


def upsample(x: torch.Tensor) -> torch.Tensor:
    """(B, c, gh, gw) per-token values -> (B, c, H, W) per pixel, bilinear."""
    return F.interpolate(x, size=FRAME_SHAPE[:2], mode="bilinear", align_corners=False)


def compose(prev: torch.Tensor, flow: torch.Tensor, keep_logit: torch.Tensor, generated: torch.Tensor,
            mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """The next frame: keep * warp(prev, flow) + (1 - keep) * generated, keep forced to 0 where the warp reads
    outside the old view. prev/generated (B, 3, H, W) in [0, 1]; flow (B, 2, H, W) px; keep_logit (B, 1, gh, gw).
    Returns (frame, keep)."""
    warped, inside = warp(prev, flow, mode)
    keep = torch.sigmoid(upsample(keep_logit)) * inside
    return keep * warped + (1 - keep) * generated, keep
