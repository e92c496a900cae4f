"""The DOOM model's latent sampler: a few-step flow-matching denoiser that draws the new latent of a frame (what the
warp cannot explain) from its distribution given the transformer's tokens, instead of regressing to its mean.

A revealed strip of a view the model has never seen has many possible contents; the mean of them is the brown fog
the regression head paints. The sampler denoises all 6x8 tokens of a frame jointly (a small conv net over the
grid), so neighbouring tokens agree, conditioned on the transformer's tokens and the regression head's mean.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class SamplerConfig:
    d_model: int = 128  # the transformer's width (its tokens are the condition)
    latent: int = 16
    channels: int = 64  # 64 x 2 blocks: ~2 ms for 4 steps on one thread; 96 x 3 was as sharp at twice the cost
    blocks: int = 2
    sample_steps: int = 4  # Euler steps from noise to a latent at inference
    temperature: float = 1.0  # scale of the starting noise (< 1 leans towards the mean)
    # training
    steps: int = 3000
    lr: float = 1e-3
    own_prob: float = 0.5  # share of batches whose inputs are the dynamics' own frames: a rollout's conditions

    def to_dict(self) -> dict:
        return asdict(self)


def _time_features(t: torch.Tensor, n: int = 16) -> torch.Tensor:
    """t (B,) in [0, 1] -> (B, n) sinusoidal features."""
    freqs = torch.exp(torch.arange(n // 2, device=t.device) * (-math.log(1000.0) / (n // 2)))
    a = t[:, None] * 1000.0 * freqs
    return torch.cat([a.sin(), a.cos()], -1)


class _Block(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, ch)
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.silu(self.c1(F.silu(self.norm(x) + cond))))


class LatentSampler(nn.Module):
    """velocity(x_t, t, cond, mean): the flow from noise (t = 0) to the next frame's latent (t = 1)."""

    def __init__(self, cfg: SamplerConfig = SamplerConfig()):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.inp = nn.Conv2d(2 * cfg.latent, ch, 3, padding=1)  # x_t and the regression head's mean
        self.cond = nn.Conv2d(cfg.d_model, ch, 1)
        self.time = nn.Linear(16, ch)
        self.blocks = nn.ModuleList(_Block(ch) for _ in range(cfg.blocks))
        self.out = nn.Conv2d(ch, cfg.latent, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def velocity(self, x_t, t, cond, mean) -> torch.Tensor:
        """x_t, mean (B, C, gh, gw); t (B,); cond (B, d, gh, gw) -> (B, C, gh, gw)."""
        c = self.cond(cond) + self.time(_time_features(t))[:, :, None, None]
        x = self.inp(torch.cat([x_t, mean], 1))
        for blk in self.blocks:
            x = blk(x, c)
        return self.out(F.silu(x))

    def sample(self, cond: torch.Tensor, mean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """noise (B, C, gh, gw) standard normal (drawn by the caller, per session) -> latents in (-1, 1)."""
        n = self.cfg.sample_steps
        x = noise * self.cfg.temperature
        for i in range(n):
            t = torch.full((x.shape[0],), i / n, device=x.device)
            x = x + self.velocity(x, t, cond, mean) / n
        return x.clamp(-1, 1)

    def loss(self, target: torch.Tensor, cond: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Flow matching (rectified flow): MSE of the predicted velocity on the straight path noise -> target."""
        noise = torch.randn_like(target)
        t = torch.sigmoid(torch.randn(target.shape[0], device=target.device))  # logit-normal: mid-path weighs most
        x_t = (1 - t)[:, None, None, None] * noise + t[:, None, None, None] * target
        return (self.velocity(x_t, t, cond, mean) - (target - noise)).pow(2).mean()


def train_sampler(net, tok, eps, cfg: SamplerConfig = SamplerConfig(), *, seed: int = 0, budget_min: float | None = None,
                  progress: bool = True, log=None) -> tuple[LatentSampler, dict]:
    """Train a sampler on the frozen dynamics `net` (teacher-forced passes over training batches, every style and
    window); stops at cfg.steps or budget_min. -> (sampler, summary)."""
    from tqdm import tqdm

    from worldlab.model.doom.dynamics import tokens
    from worldlab.model.doom.train import batch, own_inputs, predict

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    sampler = LatentSampler(cfg)
    opt = torch.optim.AdamW(sampler.parameters(), lr=cfg.lr, weight_decay=0.01)
    t0, budget, done = time.monotonic(), (budget_min or math.inf) * 60, 0
    for step in tqdm(range(cfg.steps), desc="doom sampler", disable=not progress):
        elapsed = time.monotonic() - t0
        if elapsed > budget:
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(
                step / cfg.steps, elapsed / budget))))
        x, acts, styles, mask = batch(eps, rng, net.cfg)
        B, Fr = x.shape[0], x.shape[1] - 1
        window = int(rng.choice(net.cfg.train_windows))
        with torch.no_grad():
            z = tokens(tok.encode(x.flatten(0, 1))).unflatten(0, (B, Fr + 1))  # (B, F + 1, T, C)
            z_in = z[:, :-1]
            if rng.random() < cfg.own_prob:  # the true first frame, then the model's own (one step of its error)
                own, _keep, _znew, _z = predict(net, tok, x[:, :-1], acts, styles, window)
                z_in = tokens(tok.encode(own_inputs(x, own).flatten(0, 1))).unflatten(0, (B, Fr))
            h, _ = net.hidden_seq(z_in, acts, styles, window)
            _flow, _keep, mean = net.heads(h)  # mean (B, F, C, gh, gw)
            cond = net.condition(h)  # (B, F, d, gh, gw)
            target = z[:, 1:].transpose(-1, -2).unflatten(-1, net.cfg.grid)  # (B, F, C, gh, gw)
        keep = mask.flatten().bool()  # scored frames only (a switch's old-style frames are not targets)
        loss = sampler.loss(target.flatten(0, 1)[keep], cond.flatten(0, 1)[keep], mean.flatten(0, 1)[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sampler.parameters(), 1.0)
        opt.step()
        done = step + 1
        if log is not None and step % 25 == 0:
            log({"sampler_step": step, "sampler_loss": round(loss.item(), 5), "seconds": round(elapsed, 1)})
    sampler.eval()
    return sampler, {"sampler_steps": done, "sampler_wall_s": round(time.monotonic() - t0, 1)}
