"""Train the DOOM dynamics (worldlab.model.doom.dynamics) over the frozen shipped tokenizer on explorer episodes,
every style, with mid-sequence style switches and passes on the model's own frames (training against drift);
from scratch or fine-tuning a DOOM checkpoint (`init`); then the style grade a prompt switch uses (grade.py).
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
from worldlab.model.doom.grade import GradeConfig, train_grade
from worldlab.model.doom.sampler import SamplerConfig, train_sampler
from worldlab.model.doom.tokenizer import load as load_tokenizer
from worldlab.model.doom.train_tokenizer import gradient_l1_per_frame
from worldlab.model.quantize import calibrate

TRAIN_EPISODES = 64  # explorer episodes of 300 steps on training seeds 0..63 (~19k frames, ~15 s to generate)
GRADE_EVERY = 10  # the grade learns from every 10th training frame (~2k frames: colours, not motion)
SAMPLER_BUDGET_MIN = 20.0  # the sampler trains after the dynamics, on them frozen, for its steps or this long


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


def own_inputs(x: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """The true first frame of x (B, L, 3, H, W), then the model's own (detached) frames `own` shifted by one: the
    inputs of a pass that reads what the model drew."""
    return torch.cat([x[:, :1], own[:, :-1].detach().clamp(0, 1)], 1)


def check_own(cfg: DoomConfig) -> None:
    if cfg.own_passes < 0 or not 0 <= cfg.own_loss_passes <= cfg.own_passes or cfg.own_weight < 0:
        raise ValueError(f"need own_passes >= 0, 0 <= own_loss_passes <= own_passes, own_weight >= 0: got "
                         f"{cfg.own_passes}, {cfg.own_loss_passes}, {cfg.own_weight}")


def own_pass_weight(cfg: DoomConfig, k: int) -> float:
    """Loss weight of own pass k (1..own_passes): 0 for the passes before the last `own_loss_passes` (0 = all
    carry a loss), which run without gradient only to deepen the next pass's inputs; the passes with a loss
    ramp linearly from 1 to `own_weight` at the deepest (a single one weighs `own_weight`)."""
    n = cfg.own_loss_passes or cfg.own_passes
    first = cfg.own_passes - n + 1
    if k < first:
        return 0.0
    return cfg.own_weight if n == 1 else 1.0 + (cfg.own_weight - 1.0) * (k - first) / (n - 1)


def lr_at(cfg: DoomConfig, progress: float, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# DoomConfig fields that are the training recipe, not the architecture: a fine-tune takes these from the config it
# is given and everything else from its init checkpoint.
TRAINING_FIELDS = ("seq_frames", "batch", "steps", "lr", "warmup", "train_windows", "own_passes", "own_loss_passes",
                   "own_weight", "reveal_weight", "grad_weight", "latent_weight", "switch_prob")
FINETUNE_WARMUP = 10  # steps of warm-up when starting from trained weights


def parse_overrides(items) -> dict:
    """["own_passes=4", "train_windows=4,16", ...] -> {field: value} for DoomConfig's training fields (typed like
    the defaults); one-line errors for anything else."""
    defaults, out = DoomConfig(), {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in TRAINING_FIELDS:
            raise ValueError(f"--set takes FIELD=VALUE with FIELD one of {', '.join(TRAINING_FIELDS)}; got {item!r}")
        kind = type(getattr(defaults, key))
        try:
            out[key] = tuple(int(v) for v in text.split(",") if v.strip()) if kind is tuple else kind(text)
        except ValueError:
            raise ValueError(f"--set {key} needs a {kind.__name__}, got {text!r}") from None
    return out


def train(out, cfg: DoomConfig = DoomConfig(), *, seed: int = 0, steps: int | None = None,
          budget_min: float | None = None, progress: bool = True, tokenizer=None, episodes: int = TRAIN_EPISODES,
          cache_dir=dd.DEFAULT_CACHE, init=None, grade: GradeConfig = GradeConfig(),
          sampler: SamplerConfig | None = SamplerConfig(), sampler_budget_min: float = SAMPLER_BUDGET_MIN) -> dict:
    """Train from scratch, or fine-tune the DOOM checkpoint `init` (its architecture and its own tokenizer copy,
    `cfg`'s training fields, a fresh optimizer and a short warm-up); the dynamics stop at `steps` or
    `budget_min`, whichever first; then the style grade and (unless `sampler` is None) the latent sampler on the
    frozen dynamics. Saves to `out` (+ `.metrics.jsonl`)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if steps is not None and (steps < 0 or (steps == 0 and init is None)):
        raise ValueError(f"steps must be >= 1 (or 0 with init: re-train only the grade, sampler and calibration), "
                         f"got {steps}")
    cfg = replace(cfg, steps=cfg.steps if steps is None else steps)
    init_info = {}
    if init is not None:
        if tokenizer is not None:
            raise ValueError("a fine-tune uses its init checkpoint's own tokenizer; give init or tokenizer, not both")
        from worldlab.model.doom.checkpoint import load as load_checkpoint

        net, tok, _calib, init_extra, digest, *_ = load_checkpoint(init)
        cfg = replace(net.cfg, **{f: getattr(cfg, f) for f in TRAINING_FIELDS})
        cfg = replace(cfg, warmup=min(cfg.warmup, FINETUNE_WARMUP))
        net.cfg = cfg
        net.train()
        init_info = {"init": str(init), "init_checkpoint": digest, "init_extra": init_extra}
    else:
        tok, _ = load_tokenizer(tokenizer)
        net = DoomDynamics(cfg)
    check_own(cfg)
    for p in tok.parameters():
        p.requires_grad_(False)
    eps = dd.load(dd.train_data(episodes), cache_dir)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.01)
    out = pathlib.Path(out)
    log = out.with_suffix(".metrics.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, budget = time.monotonic(), (budget_min or math.inf) * 60
    bar = tqdm(range(cfg.steps), desc="doom dynamics", disable=not progress)
    done = 0  # steps taken (0: a fine-tune of no steps re-trains only the grade and the calibration)
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
            for k in range(1, cfg.own_passes + 1):
                # inputs: the true first frame, then the previous pass's frames, so frame t's input carries up
                # to k steps of the model's own error (k >= t: exactly its free-running rollout from frame 0)
                inputs = own_inputs(x, own)
                w = own_pass_weight(cfg, k)
                with torch.set_grad_enabled(w > 0):
                    own, keep, znew, _z = predict(net, tok, inputs, acts, styles, window)
                if w > 0:
                    loss = loss + w * loss_of(own, keep, znew, x[:, 1:], target_z, mask, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            done = step + 1
            if step % 25 == 0:
                rec = {"step": step, "loss": round(loss.item(), 5), "seconds": round(elapsed, 1)}
                f.write(json.dumps(rec) + "\n")
                f.flush()
                bar.set_postfix(loss=f"{loss.item():.4f}")
    net.eval()
    calib = calibrate(net, _calibration(eps, tok, cfg, rng))
    dyn_wall = time.monotonic() - t0
    grade, grade_info = train_grade(eps.frames[:, ::GRADE_EVERY].reshape(-1, *eps.frames.shape[2:]), grade, seed=seed)
    latent_sampler, sampler_info = None, {}
    if sampler is not None:
        with open(log, "a") as f:
            latent_sampler, sampler_info = train_sampler(
                net, tok, eps, replace(sampler, d_model=cfg.d_model, latent=cfg.latent), seed=seed,
                budget_min=sampler_budget_min, progress=progress,
                log=lambda rec: (f.write(json.dumps(rec) + "\n"), f.flush()))
    extra = {"seed": seed, "steps_done": done, "wall_s": round(dyn_wall, 1), "episodes": episodes, **grade_info,
             **sampler_info, **init_info}
    digest = save(out, net, tok, calib, extra, grade, latent_sampler)
    return {"out": str(out), "checkpoint": digest, **extra}


def _calibration(eps, tok, cfg: DoomConfig, rng, n: int = 4):
    """Activation ranges for W8A8/W4A4: forward_seq inputs of a few training batches, both windows."""
    for i in range(n):
        x, acts, styles, _mask = batch(eps, rng, cfg)
        B, Fr = x.shape[0], x.shape[1] - 1
        with torch.no_grad():
            z = tokens(tok.encode(x[:, :-1].flatten(0, 1))).unflatten(0, (B, Fr))
        yield z, acts, styles, cfg.train_windows[i % len(cfg.train_windows)]
