"""Train a world model from scratch on the procedural environment (`worldlab train --preset tiny`).

Teacher-forced parallel passes plus self-forcing: later in training, the model's own (rendered)
predictions replace ground-truth inputs for a suffix of each sequence, so it learns to correct its drift.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import numpy as np
import torch

from worldlab import env
from worldlab.config import ModelConfig
from worldlab.model import checkpoint as ckpt
from worldlab.model.quantize import calibrate
from worldlab.model.transformer import WorldTransformer, fit_codebook

TRAIN_SEED_MIN = 1000  # evaluation uses seeds below this: they never appear in training


def make_batch(cfg: ModelConfig, rng: np.random.Generator, batch: int, switch_prob: float):
    """Sequences of cfg.seq_frames frames; some switch theme mid-way with the new theme as conditioning."""
    F = cfg.seq_frames
    frames = np.empty((batch, F, cfg.image_size, cfg.image_size, 3), np.uint8)
    actions = np.empty((batch, F), np.int64)
    themes = np.empty((batch, F), np.int64)
    mask = np.ones((batch, F - 1), np.float32)  # over targets x_1 .. x_{F-1}
    for b in range(batch):
        seed = int(rng.integers(TRAIN_SEED_MIN, 2**31 - 1))
        a = env.THEMES[int(rng.integers(len(env.THEMES)))]
        keys = env.random_actions(F, seed, hold=(1, 6))
        w = env.World(seed, a)
        switch = int(rng.integers(2, F - 2)) if rng.random() < switch_prob else None
        cond = a
        frames[b, 0] = w.reset()
        for t in range(1, F):
            if switch is not None and t == switch:
                cond = env.THEMES[(env.THEMES.index(a) + int(rng.integers(1, len(env.THEMES)))) % len(env.THEMES)]
                w.set_theme(cond)
            frames[b, t] = w.step(keys[t - 1])
        actions[b] = [env.action_id(k) for k in keys]
        themes[b] = env.THEMES.index(cond)  # after a recache the whole window is conditioned on the new prompt
        if switch is not None:
            mask[b, : switch - 1] = 0.0  # targets before the switch belong to the old prompt
    return (torch.from_numpy(frames), torch.from_numpy(actions), torch.from_numpy(themes), torch.from_numpy(mask))


def self_forced_inputs(net, x, a, th, window, rng, passes: int) -> torch.Tensor:
    """Replace a suffix of the inputs by the model's own predictions (1..passes steps of compounding)."""
    inp = x.clone()
    B, Fm1 = x.shape[:2]
    with torch.no_grad():
        for _ in range(passes):
            pred = net.render(net.forward_seq(inp, a, th, window))  # pred[:, t] estimates x[:, t+1]
            start = torch.from_numpy(rng.integers(1, Fm1, size=B))
            use = (torch.arange(1, Fm1)[None] >= start[:, None]).float()[..., None, None, None]  # (B, F-2,...)
            inp[:, 1:] = use * pred[:, :-1] + (1 - use) * x[:, 1:]
    return inp


def lr_at(step: int, cfg: ModelConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def train(cfg: ModelConfig, out: str | pathlib.Path, *, seed: int = 0, steps: int | None = None,
          progress: bool = True, log_every: int = 10, max_minutes: float | None = None,
          init: str | pathlib.Path | None = None, lr: float | None = None) -> dict:
    """Train from scratch, or continue from `init` (a checkpoint of the same shape) with its own schedule."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = steps or cfg.steps
    cfg_run = ModelConfig(**{**cfg.to_dict(), "steps": steps, **({"lr": lr} if lr else {}),
                             **({"warmup": 10} if init else {})})
    net = WorldTransformer(cfg_run)
    net.codebook.copy_(fit_codebook(make_batch(cfg_run, rng, 64, 0.0)[0].float() / 255.0, cfg.codebook))
    if init is not None:
        loaded, _calib, _extra, _digest = ckpt.load(init)
        if loaded.cfg.to_dict() | {"steps": 0, "lr": 0, "warmup": 0} != cfg_run.to_dict() | {"steps": 0, "lr": 0, "warmup": 0}:
            raise ValueError(f"--init checkpoint {init} has a different model config than preset {cfg.name!r}")
        net.load_state_dict(loaded.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    out = pathlib.Path(out)
    log_path = out.with_suffix(".metrics.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"train {cfg.name}", unit="step")
    t0 = time.time()
    history = []
    with open(log_path, "w") as log:
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg_run)
            frames, actions, themes, mask = make_batch(cfg_run, rng, cfg.batch, cfg.switch_prob)
            x = frames.float() / 255.0
            inp, tgt = x[:, :-1], x[:, 1:]
            a, th = actions[:, :-1], themes[:, :-1]
            window = cfg.window_long if rng.random() < 0.5 else cfg.window_short
            sf = step >= cfg_run.self_forcing_from * steps
            if sf:
                passes = int(rng.integers(1, cfg.self_forcing_passes + 1))
                inp = self_forced_inputs(net, inp, a, th, window, rng, passes=passes)
            logits = net.forward_seq(inp, a, th, window)  # (B, F-1, H, W, K)
            target = net.codes(tgt)  # (B, F-1, H, W)
            changed = (target != net.codes(inp)).float()  # (B, F-1, H, W)
            # Sprites are few pixels: weigh changed pixels up, but not on a theme-switch frame (every pixel
            # changes there; boosting it would drown the sprites' gradient).
            sprite_frames = (changed.mean((2, 3)) < 0.5).float()[:, :, None, None]
            w = (1.0 + 4.0 * changed * sprite_frames) * mask[:, :, None, None]
            ce = torch.nn.functional.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none")
            loss = (ce * w.flatten()).sum() / (w.sum() + 1e-8)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                mse = (((net.render(logits) - tgt) ** 2).mean((2, 3, 4)) * mask).sum() / mask.sum()
            rec = {"step": step, "loss": loss.item(), "psnr": float(-10 * torch.log10(mse + 1e-12)),
                   "lr": opt.param_groups[0]["lr"], "self_forcing": sf, "elapsed_s": round(time.time() - t0, 1)}
            history.append(rec)
            if step % log_every == 0 or step == steps - 1:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.5f}", psnr=f"{rec['psnr']:.1f}")
            if max_minutes and time.time() - t0 > max_minutes * 60:
                break
    if bar:
        bar.close()
    calib_batches = []
    for _ in range(2):
        f, a, th, _m = make_batch(cfg_run, rng, 4, 0.0)
        calib_batches.append((f.float()[:, :-1] / 255.0, a[:, :-1], th[:, :-1], cfg.window_long))
    calib = calibrate(net.eval(), calib_batches)
    summary = {"preset": cfg.name, "steps_done": len(history), "train_seconds": round(time.time() - t0, 1),
               "init": str(init) if init else None,
               "final_psnr_avg_last50": float(np.mean([h["psnr"] for h in history[-50:]])),
               "torch_threads": torch.get_num_threads(), "seed": seed}
    digest = ckpt.save(out, net, calib, extra=summary)
    summary["checkpoint_sha256_16"] = digest
    summary["metrics_log"] = str(log_path)
    return summary
