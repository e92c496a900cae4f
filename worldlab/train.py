"""Train a world model from scratch on the procedural environment (`worldlab train --preset tiny`).

Teacher-forced parallel passes over sprite tokens, then scheduled sampling: a suffix of each sequence's
inputs becomes the model's own rendered predictions, with the true next positions as targets.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from worldlab import env
from worldlab.config import ModelConfig
from worldlab.model import checkpoint as ckpt
from worldlab.model.quantize import calibrate
from worldlab.model.sprites import ABSENT, fit_codec, true_positions
from worldlab.model.transformer import WorldTransformer

TRAIN_SEED_MIN = 1000  # evaluation uses seeds below this: they never appear in training
RANDOM_START = 0.7  # fraction of sequences that start from a uniformly random state instead of reset()
LONG_HOLDS = 0.3  # fraction of sequences whose keys are held up to 30 frames (walls, held arrows)


def random_state(rng: np.random.Generator) -> dict:
    """A uniformly random world state: anywhere in the frame, any allowed velocity."""
    return {"agent": rng.integers(0, env.SIZE - env.AGENT + 1, size=2),
            "objects": rng.integers(0, env.SIZE - env.OBJECT + 1, size=(2, 2)),
            "velocities": rng.integers(1, 3, size=(2, 2)) * rng.choice([-1, 1], size=(2, 2))}


def simulate(cfg: ModelConfig, rng: np.random.Generator, batch: int):
    """Rollouts of seq_frames + 1 frames -> (frames uint8 (B, F+1, H, W, 3), positions (B, F+1, 3, 2),
    actions (B, F), themes (B, F)): frame t + action t -> frame t + 1."""
    Fr = cfg.seq_frames
    frames = np.empty((batch, Fr + 1, env.SIZE, env.SIZE, 3), np.uint8)
    pos = np.empty((batch, Fr + 1, 3, 2), np.int64)
    actions = np.empty((batch, Fr), np.int64)
    themes = np.empty((batch, Fr), np.int64)
    for b in range(batch):
        seed = int(rng.integers(TRAIN_SEED_MIN, 2**31 - 1))
        theme = int(rng.integers(len(env.THEMES)))
        w = env.World(seed, env.THEMES[theme])
        frames[b, 0] = w.place(**random_state(rng)) if rng.random() < RANDOM_START else w.render()
        hold = (1, 30) if rng.random() < LONG_HOLDS else (1, 8)
        keys = env.random_actions(Fr, seed, hold=hold)
        pos[b, 0] = true_positions(w.state())
        for t, k in enumerate(keys):
            frames[b, t + 1] = w.step(k)
            pos[b, t + 1] = true_positions(w.state())
        actions[b] = [env.action_id(k) for k in keys]
        themes[b] = theme
    return (torch.from_numpy(frames), torch.from_numpy(pos), torch.from_numpy(actions),
            torch.from_numpy(themes))


def make_batch(net: WorldTransformer, cfg: ModelConfig, rng: np.random.Generator, batch: int):
    """-> obs (B, F, 3, 4) boxes of frames 0..F-1, targets (B, F, 3, 2) true positions in frames 1..F,
    actions, themes (B, F), on the net's device. Observations come from the compositor (exactly the
    environment's frames)."""
    device = next(net.parameters()).device
    _frames, pos, actions, themes = (t.to(device) for t in simulate(cfg, rng, batch))
    obs = net.codec.observe(net.codec.compose(pos[:, :-1]))
    return obs, pos[:, 1:], actions, themes


@torch.no_grad()
def self_forced_inputs(net, obs, a, th, window, phase, rng, passes: int) -> torch.Tensor:
    """Replace a random suffix of the inputs by observations of the model's own predictions."""
    inp = obs.clone()
    B, Fr = obs.shape[:2]
    for _ in range(passes):
        pred = net.positions(net.forward_seq(inp, a, th, window, phase=phase))  # pred[:, t] = frame t + 1
        seen = net.codec.observe(net.codec.compose(pred[:, :-1]))  # (B, F-1, 3, 4): frames 1..F-1
        start = torch.from_numpy(rng.integers(1, Fr, size=B)).to(obs.device)
        use = (torch.arange(1, Fr, device=obs.device)[None] >= start[:, None])[..., None, None]  # (B, F-1, 1, 1)
        inp[:, 1:] = torch.where(use, seen, obs[:, 1:])
    return inp


def hide_objects(obs: torch.Tensor, cfg: ModelConfig, rng: np.random.Generator) -> torch.Tensor:
    """In a cfg.hide_objects fraction of sequences, one object's boxes read ABSENT for a random span of
    cfg.hide_frames frames (after frame 0, so where it started stays visible); the rest unchanged."""
    B, Fr = obs.shape[:2]
    out = obs.clone()
    lo, hi = cfg.hide_frames
    for b in np.flatnonzero(rng.random(B) < cfg.hide_objects):
        span = int(rng.integers(lo, min(hi, Fr - 2) + 1))
        start = int(rng.integers(1, Fr - span))
        out[b, start:start + span, int(rng.integers(1, 3))] = ABSENT
    return out


def lr_at(step: int, cfg: ModelConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def fit_decoder(net: WorldTransformer, cfg: ModelConfig, rng: np.random.Generator) -> None:
    frames, pos, _a, _t = simulate(cfg, rng, 16)
    fit_codec(net.codec, frames.flatten(0, 1), pos.flatten(0, 1))


def train(cfg: ModelConfig, out: str | pathlib.Path, *, seed: int = 0, steps: int | None = None,
          progress: bool = True, log_every: int = 10, max_minutes: float | None = None,
          init: str | pathlib.Path | None = None, lr: float | None = None, device: str = "cpu") -> dict:
    """Train from scratch, or continue from `init` (a checkpoint of the same shape) with its own schedule,
    on `device` (the checkpoint is written from CPU copies either way)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = steps or cfg.steps
    cfg_run = ModelConfig(**{**cfg.to_dict(), "steps": steps, **({"lr": lr} if lr else {}),
                             **({"warmup": 10} if init else {})})
    net = WorldTransformer(cfg_run)
    fit_decoder(net, cfg_run, rng)
    if init is not None:
        loaded, _calib, _extra, _digest = ckpt.load(init)
        ignore = {"steps": 0, "lr": 0, "warmup": 0, "hide_objects": 0, "hide_frames": 0}  # schedule, not shape
        if loaded.cfg.to_dict() | ignore != cfg_run.to_dict() | ignore:
            raise ValueError(f"--init checkpoint {init} has a different model config than preset {cfg.name!r}")
        net.load_state_dict(loaded.state_dict())
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg_run.lr, weight_decay=0.01, betas=(0.9, 0.98))
    out = pathlib.Path(out)
    log_path = out.with_suffix(".metrics.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"train {cfg.name}", unit="step")
    t0 = time.time()
    history = []
    period = math.lcm(*cfg.clock_periods)
    with open(log_path, "w") as log:
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg_run)
            obs, target, a, th = make_batch(net, cfg_run, rng, cfg.batch)
            window = cfg.train_windows[1] if rng.random() < 0.5 else cfg.train_windows[0]
            phase = torch.from_numpy(rng.integers(0, period, size=cfg.batch)).to(device)
            sf = step >= cfg_run.self_forcing_from * steps
            if sf:
                passes = int(rng.integers(1, cfg.self_forcing_passes + 1))
                obs = self_forced_inputs(net, obs, a, th, window, phase, rng, passes=passes)
            if cfg_run.hide_objects:
                obs = hide_objects(obs, cfg_run, rng)
            logits = net.forward_seq(obs, a, th, window, phase=phase)  # (B, F, 3, 2, P)
            loss = F.cross_entropy(logits.flatten(0, -2), target.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                err = (net.positions(logits) - target).abs().max(-1).values  # (B, F, 3) px
            rec = {"step": step, "loss": loss.item(), "exact": float((err == 0).float().mean()),
                   "err_px": float(err.float().mean()), "window": window,
                   "lr": opt.param_groups[0]["lr"], "self_forcing": sf, "elapsed_s": round(time.time() - t0, 1)}
            history.append(rec)
            if step % log_every == 0 or step == steps - 1:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", exact=f"{rec['exact']:.3f}")
            if max_minutes and time.time() - t0 > max_minutes * 60:
                break
    if bar:
        bar.close()
    calib_batches = []
    for _ in range(2):
        obs, _t, a, th = make_batch(net, cfg_run, rng, 8)
        calib_batches.append((obs, a, th, cfg.window_long))
    calib = calibrate(net.eval(), calib_batches)
    summary = {"preset": cfg.name, "steps_done": len(history), "train_seconds": round(time.time() - t0, 1),
               "init": str(init) if init else None,
               "final_exact_last50": float(np.mean([h["exact"] for h in history[-50:]])),
               "torch_threads": torch.get_num_threads(), "seed": seed}
    digest = ckpt.save(out, net.cpu(), {k: v.cpu() for k, v in calib.items()}, extra=summary)
    summary["checkpoint_sha256_16"] = digest
    summary["metrics_log"] = str(log_path)
    return summary
