"""Train the DOOM dynamics (worldlab.model.doom.dynamics) over the frozen shipped tokenizer on explorer episodes,
every style, with mid-sequence style switches and passes on the model's own frames (training against drift).
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from dataclasses import replace

import numpy as np
import torch

from worldlab.doom import STYLES
from worldlab.model.doom import data as dd
from worldlab.model.doom.checkpoint import save
from worldlab.model.doom.dynamics import DoomConfig, DoomDynamics, compose, tokens, upsample
from worldlab.model.doom.tokenizer import load as load_tokenizer
from worldlab.model.doom.train_tokenizer import gradient_l1_per_frame
from worldlab.model.quantize import calibrate

TRAIN_EPISODES = 64  # explorer episodes of 300 steps on training seeds 0..63 (~19k frames, ~15 s to generate)


def batch(eps: dd.Episodes, rng: np.random.Generator, cfg: DoomConfig):
    """-> frames (B, L, 3, H, W) in [0, 1] styled, actions (B, L-1), styles (B, L-1), target mask (B, L-1).
    A switching sequence is conditioned on its new style throughout (as after a recache) and scored only on
    the frames drawn in it."""
    B, L = cfg.batch, cfg.seq_frames + 1
    E, T1 = eps.frames.shape[:2]
    e, t0 = rng.integers(0, E, B), rng.integers(0, T1 - L + 1, B)
    idx = t0[:, None] + np.arange(L)
    raw = eps.frames[e[:, None], idx]  # (B, L, H, W, 3)
    acts = eps.actions[e[:, None], idx[:, :-1]].astype(np.int64)
    old, new = rng.integers(0, len(STYLES), B), rng.integers(0, len(STYLES), B)
    switch = (rng.random(B) < cfg.switch_prob) & (old != new)
    at = np.where(switch, rng.integers(2, L - 1, B), 0)  # first frame drawn in the new style
    frames = np.empty_like(raw)
    for b in range(B):
        frames[b, :at[b]] = dd.styled(raw[b, :at[b]], [STYLES[old[b]]] * int(at[b]))
        frames[b, at[b]:] = dd.styled(raw[b, at[b]:], [STYLES[new[b]]] * int(L - at[b]))
    mask = (np.arange(1, L)[None] >= at[:, None]).astype(np.float32)  # targets t >= at
    x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255
    styles = torch.from_numpy(np.repeat(new[:, None], L - 1, 1))
    return x, torch.from_numpy(acts), styles, torch.from_numpy(mask)


def predict(net, tok, inputs: torch.Tensor, acts, styles, window: int):
    """inputs (B, F, 3, H, W) -> predicted next frames (B, F, 3, H, W), keep maps (B, F, 1, H, W) (bilinear
    warps), the new latents (B, F, T, C) and the inputs' own tokens (B, F, T, C).

    The decoder runs without gradient: the new latent is trained against the next frame's tokens (latent_loss)
    and the image loss trains the flow and the keep map. Backpropagating through the decoder cost ~2.4x the
    step on one core and would let the dynamics bend the tokenizer's latent space."""
    B, Fr = inputs.shape[:2]
    with torch.no_grad():
        z = tokens(tok.encode(inputs.flatten(0, 1))).unflatten(0, (B, Fr))  # (B, F, T, C)
    flow, keep, znew = net.forward_seq(z, acts, styles, window)
    with torch.no_grad():
        gen = tok.decode(znew.flatten(0, 1))  # (B*F, 3, H, W)
    pred, keep_px = compose(inputs.flatten(0, 1), upsample(flow.flatten(0, 1)), keep.flatten(0, 1), gen)
    return pred.unflatten(0, (B, Fr)), keep_px.unflatten(0, (B, Fr)), tokens(znew), z


def loss_of(pred, keep, znew, target, target_z, mask, cfg: DoomConfig) -> torch.Tensor:
    """Masked mean over targets of: L1 on pixels + L1 on image gradients + the price of not keeping warped
    pixels + MSE of the new latent against the target frame's tokens."""
    per = ((pred - target).abs().mean((2, 3, 4))
           + cfg.grad_weight * gradient_l1_per_frame(pred.flatten(0, 1), target.flatten(0, 1)).view(mask.shape)
           + cfg.reveal_weight * (1 - keep).mean((2, 3, 4))
           + cfg.latent_weight * (znew - target_z).pow(2).mean((2, 3)))
    return (per * mask).sum() / mask.sum().clamp(min=1)


def lr_at(cfg: DoomConfig, progress: float, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(out, cfg: DoomConfig = DoomConfig(), *, seed: int = 0, steps: int | None = None,
          budget_min: float | None = None, progress: bool = True, tokenizer=None, episodes: int = TRAIN_EPISODES,
          cache_dir=dd.DEFAULT_CACHE) -> dict:
    """Train from scratch, save to `out` (+ `.metrics.jsonl`); stops at `steps` or `budget_min`, whichever first."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = replace(cfg, steps=steps or cfg.steps)
    tok, _ = load_tokenizer(tokenizer)
    for p in tok.parameters():
        p.requires_grad_(False)
    eps = dd.load(dd.train_data(episodes), cache_dir)
    net = DoomDynamics(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.01)
    out = pathlib.Path(out)
    log = out.with_suffix(".metrics.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, budget = time.monotonic(), (budget_min or math.inf) * 60
    bar = tqdm(range(cfg.steps), desc="doom dynamics", disable=not progress)
    with open(log, "w") as f:
        for step in bar:
            elapsed = time.monotonic() - t0
            if elapsed > budget:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, max(step / cfg.steps, elapsed / budget), step)
            x, acts, styles, mask = batch(eps, rng, cfg)
            window = int(rng.choice(cfg.train_windows))
            with torch.no_grad():
                target_z = tokens(tok.encode(x[:, -1])).unsqueeze(1)  # (B, 1, T, C): the last target's tokens
            pred, keep, znew, z = predict(net, tok, x[:, :-1], acts, styles, window)
            target_z = torch.cat([z[:, 1:], target_z], 1)  # (B, F, T, C): the true next frames' tokens
            loss = loss_of(pred, keep, znew, x[:, 1:], target_z, mask, cfg)
            own = pred
            for _ in range(cfg.own_passes):  # inputs: the true first frame, then the model's own frames
                inputs = torch.cat([x[:, :1], own[:, :-1].detach().clamp(0, 1)], 1)
                own, keep, znew, _z = predict(net, tok, inputs, acts, styles, window)
                loss = loss + loss_of(own, keep, znew, x[:, 1:], target_z, mask, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            if step % 25 == 0:
                rec = {"step": step, "loss": round(loss.item(), 5), "seconds": round(elapsed, 1)}
                f.write(json.dumps(rec) + "\n")
                f.flush()
                bar.set_postfix(loss=f"{loss.item():.4f}")
    net.eval()
    calib = calibrate(net, _calibration(eps, tok, cfg, rng))
    wall = time.monotonic() - t0
    extra = {"seed": seed, "steps_done": step + 1, "wall_s": round(wall, 1), "episodes": episodes}
    digest = save(out, net, tok, calib, extra)
    return {"out": str(out), "checkpoint": digest, **extra}


def _calibration(eps, tok, cfg: DoomConfig, rng, n: int = 4):
    """Activation ranges for W8A8/W4A4: forward_seq inputs of a few training batches, both windows."""
    for i in range(n):
        x, acts, styles, _mask = batch(eps, rng, cfg)
        B, Fr = x.shape[0], x.shape[1] - 1
        with torch.no_grad():
            z = tokens(tok.encode(x[:, :-1].flatten(0, 1))).unflatten(0, (B, Fr))
        yield z, acts, styles, cfg.train_windows[i % len(cfg.train_windows)]
