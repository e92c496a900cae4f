"""Train the conv world model (worldlab.model.conv) from a seed: `worldlab train --preset conv --out PATH`.

Each batch is freshly simulated 5-frame windows from training seeds (>= 1000); for part of them the inputs
are the model's own 1-2 step predictions (scheduled sampling) while the target stays the true next frame.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from worldlab import env
from worldlab.model.conv import ConvConfig, ConvNet, frame_classes, next_classes, save, target_log_prob
from worldlab.train import TRAIN_SEED_MIN, random_state

WINDOW = 5  # frames per training example: up to two own steps, then the scored one


@dataclass(frozen=True)
class ConvTrainConfig:
    """Training schedule of the conv model (the shipped checkpoint used these defaults)."""

    steps: int = 2400
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 50
    from_reset: float = 0.3  # share of windows that start a few steps after World.reset() (else a random state)
    held: float = 0.5  # share of windows whose four actions are one held key combination
    active_weight: float = 4.0  # extra loss weight on pixels that change (the only hard ones)
    self_forcing_from: float = 0.4  # from this fraction of training on, half the batch sees its own steps
    log_every: int = 50


def simulate(rng: np.random.Generator, batch: int, cfg: ConvTrainConfig):
    """-> classes (B, WINDOW, H, W) long, action deltas (B, WINDOW - 1, 2) float: action i makes frame i + 1."""
    classes = np.empty((batch, WINDOW, env.SIZE, env.SIZE, 3), np.uint8)
    deltas = np.empty((batch, WINDOW - 1, 2), np.float32)
    for b in range(batch):
        w = env.World(int(rng.integers(TRAIN_SEED_MIN, 2**31 - 1)))
        if rng.random() < cfg.from_reset:
            for _ in range(int(rng.integers(0, 40))):
                w.step(env.ACTION_KEYS[int(rng.integers(env.N_ACTIONS))])
        else:
            w.place(**random_state(rng))
        ids = [int(rng.integers(env.N_ACTIONS))] * (WINDOW - 1) if rng.random() < cfg.held else \
            rng.integers(0, env.N_ACTIONS, WINDOW - 1).tolist()
        classes[b, 0] = w.render()
        for t, a in enumerate(ids):
            classes[b, t + 1] = w.step(env.ACTION_KEYS[a])
            deltas[b, t] = env.action_delta(env.ACTION_KEYS[a])
    return frame_classes(classes), torch.from_numpy(deltas)


def own_inputs(net: ConvNet, c: torch.Tensor, d: torch.Tensor, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prev, cur) for predicting frame 4: true frames 2, 3, or (for rows with own = k > 0) the last k of them
    replaced by the model's own predictions, compounded."""
    frames = [c[:, i] for i in range(WINDOW - 1)]
    with torch.no_grad():
        for k in (2, 1):  # own = 2: replace frame 2, then (own >= 1) frame 3, from the frames before it
            t, rows = WINDOW - 1 - k, (own >= k).nonzero()[:, 0]
            if len(rows):
                prev, cur = frames[t - 2][rows], frames[t - 1][rows]
                frames[t] = frames[t].index_put((rows,), next_classes(net(prev, cur, d[rows, t - 1]), cur))
    return frames[2], frames[3]


def lr_at(step: int, cfg: ConvTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))


def train_conv(out, *, seed: int = 0, cfg: ConvTrainConfig = ConvTrainConfig(), model: ConvConfig = ConvConfig(),
               steps: int | None = None, progress: bool = True, device: str = "cpu") -> dict:
    """Train from scratch on `device` (reproducible from `seed` on one CPU thread), save to `out` with a
    .metrics.jsonl log beside."""
    from tqdm import tqdm

    steps = steps or cfg.steps
    cfg = ConvTrainConfig(**{**cfg.__dict__, "steps": steps})
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ConvNet(model).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    log_path = pathlib.Path(out).with_suffix(".metrics.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0, losses = time.time(), []
    with open(log_path, "w") as log:
        for step in tqdm(range(steps), disable=not progress, desc="train conv"):
            c, d = (t.to(device) for t in simulate(rng, cfg.batch, cfg))
            own = torch.zeros(cfg.batch, dtype=torch.long)
            if step >= cfg.self_forcing_from * steps:
                own = torch.from_numpy(rng.integers(0, 3, cfg.batch) * (rng.random(cfg.batch) < 0.5))
            own = own.to(device)
            prev, cur = own_inputs(net, c, d, own)
            target = c[:, 4]
            nll = -target_log_prob(net(prev, cur, d[:, 3]), cur, target)  # (B, H, W)
            weight = 1 + cfg.active_weight * ((target != cur) | (cur != prev)).float()
            loss = (nll * weight).sum() / weight.sum()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                log.write(json.dumps({"step": step + 1, "loss": float(np.mean(losses[-cfg.log_every:])),
                                      "lr": lr_at(step, cfg), "s": round(time.time() - t0, 1)}) + "\n")
                log.flush()
    summary = {"steps": steps, "seed": seed, "loss": float(np.mean(losses[-cfg.log_every:])),
               "params": sum(p.numel() for p in net.parameters()), "threads": torch.get_num_threads()}
    # No wall time in the file: the same seed and thread count must give the same bytes (and hash).
    digest = save(out, net.cpu(), extra={"train": cfg.__dict__, **summary})
    return {**summary, "train_s": round(time.time() - t0, 1), "checkpoint": digest}


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="train the conv world model (same as `worldlab train --preset conv`)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps(train_conv(a.out, seed=a.seed, steps=a.steps)))
