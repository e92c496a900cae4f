"""The block-causal world transformer: patch tokens per frame, prompt (theme) and action conditioning.

Frame block t (tokens of frame x_t + action a_t) predicts x_{t+1} as a residual over x_t. Attention is
causal across frames, bidirectional within a frame, limited to sink + window frames, with an ALiBi bias
over frame age computed by the same rule the KV cache uses (kernels.kv_cache.alibi_ages).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldlab.config import ModelConfig
from worldlab.kernels.kv_cache import alibi_ages


def alibi_slopes(n_heads: int) -> torch.Tensor:
    # Geometric slopes as in ALiBi, scaled so the gentlest head still sees ~the whole long window.
    return torch.tensor([2.0 ** (-(i + 1) * 4.0 / n_heads) for i in range(n_heads)], dtype=torch.float32)


def patchify(frames: torch.Tensor, p: int) -> torch.Tensor:
    """(..., H, W, 3) in [0, 1] -> (..., H/p * W/p, p*p*3)."""
    *lead, H, W, C = frames.shape
    x = frames.reshape(*lead, H // p, p, W // p, p, C)
    x = x.transpose(-4, -3)  # (..., H/p, W/p, p, p, C)
    return x.reshape(*lead, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, p: int, size: int) -> torch.Tensor:
    """(..., N, p*p*3) -> (..., size, size, 3)."""
    *lead, N, _ = tokens.shape
    g = size // p
    x = tokens.reshape(*lead, g, g, p, p, 3).transpose(-4, -3)
    return x.reshape(*lead, size, size, 3)


def frame_mask(q_frames: torch.Tensor, k_frames: torch.Tensor, sink: int, window: int,
               slopes: torch.Tensor) -> torch.Tensor:
    """(H, Fq, Fk) additive bias: ALiBi over age where visible, -inf where masked (future or evicted)."""
    qf, kf = q_frames[:, None], k_frames[None, :]
    visible = (kf <= qf) & ((kf < sink) | (qf - kf < window))
    age = alibi_ages(qf, kf, sink, window).to(torch.float32)
    bias = -slopes[:, None, None] * age[None]
    return bias.masked_fill(~visible[None], float("-inf"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.mlp_ratio * d)
        self.fc2 = nn.Linear(cfg.mlp_ratio * d, d)

    def split_qkv(self, x: torch.Tensor):
        """(B, N, d) -> q, k, v each (B, H, N, Dh)."""
        B, N, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, N, 3, self.n_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """attn (B, H, N, Dh) -> residual updates of attention and MLP."""
        B, H, N, Dh = attn.shape
        x = x + self.proj(attn.transpose(1, 2).reshape(B, N, H * Dh))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    def forward_seq(self, x: torch.Tensor, bias: torch.Tensor):
        """Parallel pass over whole sequences; x (B, F*T, d), bias (H, F*T, F*T). Returns x, k, v."""
        q, k, v = self.split_qkv(x)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])
        return self.finish(x, attn), k, v


class WorldTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, T, pdim = cfg.d_model, cfg.tokens_per_frame, cfg.patch * cfg.patch * 3
        self.patch_in = nn.Linear(pdim, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.02)
        self.action = nn.Embedding(cfg.n_actions, d)
        self.theme = nn.Embedding(cfg.n_themes, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_out = nn.LayerNorm(d)
        self.patch_out = nn.Linear(d, pdim)
        nn.init.zeros_(self.patch_out.weight)  # start as "copy the previous frame"
        nn.init.zeros_(self.patch_out.bias)
        self.register_buffer("slopes", alibi_slopes(cfg.n_heads), persistent=False)

    def embed(self, frames: torch.Tensor, actions: torch.Tensor, themes: torch.Tensor) -> torch.Tensor:
        """frames (B, F, H, W, 3) in [0,1], actions (B, F), themes (B, F) -> tokens (B, F, T, d)."""
        x = self.patch_in(patchify(frames, self.cfg.patch) - 0.5) + self.pos
        return x + (self.action(actions) + self.theme(themes))[:, :, None, :]

    def decode(self, h: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """h (B, F, T, d) -> next frames (B, F, H, W, 3) = current + predicted residual (unclamped)."""
        delta = unpatchify(self.patch_out(self.norm_out(h)), self.cfg.patch, self.cfg.image_size)
        return frames + delta

    def forward_seq(self, frames, actions, themes, window: int, frame_ids: torch.Tensor | None = None,
                    return_kv: bool = False):
        """Teacher-forced parallel pass. Returns next-frame predictions (B, F, H, W, 3) [, per-layer K/V]."""
        B, Fr = frames.shape[:2]
        T = self.cfg.tokens_per_frame
        ids = torch.arange(Fr, device=frames.device) if frame_ids is None else frame_ids
        fb = frame_mask(ids, ids, self.cfg.sink, window, self.slopes)  # (H, F, F)
        bias = fb.repeat_interleave(T, 1).repeat_interleave(T, 2)  # (H, F*T, F*T)
        x = self.embed(frames, actions, themes).reshape(B, Fr * T, -1)
        kvs = []
        for blk in self.blocks:
            x, k, v = blk.forward_seq(x, bias)
            kvs.append((k, v))
        out = self.decode(x.view(B, Fr, T, -1), frames)
        return (out, kvs) if return_kv else out
