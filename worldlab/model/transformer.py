"""The block-causal world transformer over sprite tokens: one block of 3 tokens (agent, two objects) per frame.

Block t (the visible boxes of frame t, + action a_t and the prompt's theme) predicts where every sprite is
in frame t+1, hidden or not; attention is block-causal over sink + window frames with ALiBi frame ages.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldlab.config import ModelConfig
from worldlab.kernels.kv_cache import alibi_ages
from worldlab.model.sprites import ABSENT, N_SPRITES, SpriteCodec


def alibi_slopes(n_heads: int) -> torch.Tensor:
    # Geometric slopes as in ALiBi, scaled so the gentlest head still sees ~the whole long window.
    return torch.tensor([2.0 ** (-(i + 1) * 4.0 / n_heads) for i in range(n_heads)], dtype=torch.float32)


def frame_mask(q_frames: torch.Tensor, k_frames: torch.Tensor, sink: int, window: int,
               slopes: torch.Tensor) -> torch.Tensor:
    """(H, Fq, Fk) additive bias: ALiBi over age where visible, -inf where masked (future or evicted)."""
    qf, kf = q_frames[:, None], k_frames[None, :]
    visible = (kf <= qf) & ((kf < sink) | (qf - kf < window))
    age = alibi_ages(qf, kf, sink, window).to(torch.float32)
    bias = -slopes[:, None, None] * age[None]
    return bias.masked_fill(~visible[None], float("-inf"))


def clock_rates(periods: tuple[int, ...]) -> torch.Tensor:
    """Angular rate of each clock period (a buffer of the net: no host copy inside a captured CUDA graph)."""
    return torch.tensor([2 * math.pi / p for p in periods])


def clock_features(frame_ids: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """(...) frame ids -> (..., 2 * len(rates)) sin/cos of the frame's phase in each period.

    ALiBi tells attention how old a frame is but not the values it reads; a clock in the token lets the
    model subtract phases and know how long ago a hidden object was last seen (periodic: streams never end)."""
    ang = frame_ids.to(torch.float32)[..., None] * rates
    return torch.cat([ang.sin(), ang.cos()], -1)


def age_angles(frame_ids: torch.Tensor, periods: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(...) int frame ids -> cos, sin (..., n) of the angle 2 pi (f mod P) / P for each period P.

    The ids are reduced modulo each period in integers first, so the angle stays exact however long the
    stream runs, and R(-angle(q)) R(angle(k)) = R(-2 pi (q - k) / P) up to fp32 rounding."""
    f = frame_ids.to(torch.int64)[..., None]
    ang = (f % periods).to(torch.float32) * (2 * math.pi / periods.to(torch.float32))
    return ang.cos(), ang.sin()


def rotate_tail(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the last 2n channels of x (..., D) as n planes (channel D-2n+i with D-n+i) by the angles
    whose cos/sin (..., n) broadcast against x[..., :n]; the other channels pass unchanged."""
    n = cos.shape[-1]
    a, b = x[..., -2 * n:-n], x[..., -n:]
    return torch.cat([x[..., :-2 * n], a * cos - b * sin, a * sin + b * cos], -1)


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

    def forward_seq(self, x: torch.Tensor, bias: torch.Tensor, rot=None):
        """Parallel pass over whole sequences; x (B, F*T, d), bias (H, F*T, F*T). Returns x, k, v (v as
        cached: with value-age rotation on, rotated by the key frame's clock).

        rot: None, or (cos, sin, keep) of each token's frame clock, (B, 1, F*T, n) and keep (B, 1, F*T, 1)
        (0 for sink frames): values are rotated by their frame's clock, outputs by minus the query's."""
        q, k, v = self.split_qkv(x)
        if rot is not None:
            cos, sin, keep = rot
            v = age_values(v, cos, sin, keep)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])
        if rot is not None:
            attn = rotate_tail(attn, cos, -sin)
        return self.finish(x, attn), k, v


def age_values(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """v (..., D) as the cache stores it: the last 2n channels rotated by the key frame's clock and zeroed
    (keep = 0) for sink frames."""
    n = cos.shape[-1]
    r = rotate_tail(v, cos, sin)
    return torch.cat([r[..., :-2 * n], r[..., -2 * n:] * keep], -1)


class WorldTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, P = cfg.d_model, cfg.image_size
        self.codec = SpriteCodec(cfg.image_size)
        self.coords = nn.ModuleList(nn.Embedding(P + 1, d) for _ in range(4))  # x0, y0, x1, y1 (+ ABSENT)
        self.sprite = nn.Parameter(torch.randn(N_SPRITES, d) * 0.02)
        self.clock = nn.Linear(2 * len(cfg.clock_periods), d)
        self.action = nn.Embedding(cfg.n_actions, d)
        self.theme = nn.Embedding(cfg.n_themes, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, 2 * P)  # logits of the sprite's next x and y (top-left corner)
        self.register_buffer("slopes", alibi_slopes(cfg.n_heads), persistent=False)
        self.register_buffer("clock_rates", clock_rates(cfg.clock_periods), persistent=False)
        if cfg.coord_fourier:  # Fourier box coordinates (off by default: no parameter, old checkpoints load)
            self.register_buffer("coord_rates", clock_rates(cfg.coord_fourier), persistent=False)
            self.coord_proj = nn.Linear(4 * 2 * len(cfg.coord_fourier), d, bias=False)
        if cfg.value_age_periods:
            self.register_buffer("age_periods", torch.tensor(cfg.value_age_periods, dtype=torch.int64),
                                 persistent=False)

    def embed(self, obs: torch.Tensor, actions: torch.Tensor, themes: torch.Tensor,
              frame_ids: torch.Tensor) -> torch.Tensor:
        """obs (B, F, 3, 4) boxes, actions/themes (B, F), frame_ids (B, F) -> tokens (B, F, 3, d)."""
        x = sum(emb(obs[..., j]) for j, emb in enumerate(self.coords)) + self.sprite  # (B, F, 3, d)
        if self.cfg.coord_fourier:
            ang = obs.to(torch.float32)[..., None] * self.coord_rates  # (B, F, 3, 4, n)
            feats = torch.cat([ang.sin(), ang.cos()], -1) * (obs != ABSENT)[..., None]  # ABSENT: no features
            x = x + self.coord_proj(feats.flatten(-2))
        ctx = self.action(actions) + self.theme(themes) + self.clock(clock_features(frame_ids, self.clock_rates))
        return x + ctx[:, :, None, :]

    def age_rotation(self, clock_ids: torch.Tensor, frame_ids: torch.Tensor):
        """clock ids (B, F) and frame ids (F,) or (B, F) -> (cos, sin (B, 1, F*T, n), keep (B, 1, F*T, 1)) for
        Block.forward_seq, or None with value-age rotation off. Sink frames (id < the trained sink) keep
        nothing in the rotated channels."""
        if not self.cfg.value_age_periods:
            return None
        T = N_SPRITES
        cos, sin = age_angles(clock_ids, self.age_periods)  # (B, F, n)
        keep = (frame_ids >= self.cfg.sink).to(torch.float32).expand(clock_ids.shape)[..., None]  # (B, F, 1)
        rep = lambda t: t.repeat_interleave(T, 1)[:, None]  # (B, F, n) -> (B, 1, F*T, n)
        return rep(cos), rep(sin), rep(keep)

    def heads(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., 2, P) logits over next x and next y."""
        return self.head(self.norm_out(h)).unflatten(-1, (2, self.cfg.image_size))

    def forward_seq(self, obs, actions, themes, window: int, frame_ids: torch.Tensor | None = None,
                    return_kv: bool = False, phase: torch.Tensor | None = None):
        """Teacher-forced parallel pass. obs (B, F, 3, 4) -> next-position logits (B, F, 3, 2, P) [, K/V].

        frame_ids (F,) place the blocks in the stream (mask and ALiBi); phase (B,) shifts each sequence's
        clock (training draws it at random so every phase of a long stream is seen)."""
        B, Fr = obs.shape[:2]
        T = N_SPRITES
        ids = torch.arange(Fr, device=obs.device) if frame_ids is None else frame_ids
        fb = frame_mask(ids, ids, self.cfg.sink, window, self.slopes)  # (H, F, F)
        bias = fb.repeat_interleave(T, 1).repeat_interleave(T, 2)  # (H, F*T, F*T)
        clock_ids = ids[None].expand(B, Fr) + (0 if phase is None else phase[:, None])
        x = self.embed(obs, actions, themes, clock_ids).reshape(B, Fr * T, -1)
        rot = self.age_rotation(clock_ids, ids)
        kvs = []
        for blk in self.blocks:
            x, k, v = blk.forward_seq(x, bias, rot)
            kvs.append((k, v))
        out = self.heads(x.view(B, Fr, T, -1))
        return (out, kvs) if return_kv else out

    @staticmethod
    def positions(logits: torch.Tensor) -> torch.Tensor:
        """(..., 3, 2, P) logits -> (..., 3, 2) long: the most likely top-left corner of each sprite."""
        return logits.argmax(-1)

