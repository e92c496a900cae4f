"""`worldlab eval`: roll the model out on its own frames against the environment (the ground truth).

Protocol: prefill 8 ground-truth frames of a held-out seed, then N steps under the environment's action
sequence; per-step PSNR/SSIM, agent-position error, collapse checks, a prompt-switch run, kv_bytes, model_ms.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from worldlab import env
from worldlab.model import CONTEXT_FRAMES

SWITCH_AFTER = 16  # steps rolled out before the prompt switch in the switch run
SWITCH_FRAMES = 3  # "within 3 frames of a prompt switch"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _gauss(size=11, sigma=1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


_WIN = _gauss()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, 11x11 Gaussian, sigma 1.5) averaged over RGB channels."""
    x = torch.from_numpy(a).permute(2, 0, 1)[None].double()
    y = torch.from_numpy(b).permute(2, 0, 1)[None].double()
    w = _WIN.double()
    mu_x, mu_y = F.conv2d(x, w, groups=3), F.conv2d(y, w, groups=3)
    sxx = F.conv2d(x * x, w, groups=3) - mu_x**2
    syy = F.conv2d(y * y, w, groups=3) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=3) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def collapse_flags(frames: np.ndarray, truth: np.ndarray) -> dict:
    """NaN cannot survive uint8; frozen = 16 identical generated frames while the truth moved;
    saturated = a frame that is almost one flat value (std < 2) or clipped at 0/255 for > 90 % of pixels."""
    frozen = False
    for i in range(16, len(frames)):
        if np.array_equal(frames[i - 16], frames[i]) and not np.array_equal(truth[i - 16], truth[i]):
            frozen = True
            break
    stds = frames.reshape(len(frames), -1).std(1)
    clipped = ((frames == 0) | (frames == 255)).reshape(len(frames), -1).mean(1)
    return {"frozen": frozen, "saturated": bool((stds < 2).any() or (clipped > 0.9).any())}


def rollout_seed(model, seed: int, steps: int, theme: str) -> dict:
    actions = env.random_actions(CONTEXT_FRAMES - 1 + steps, seed)
    w = env.World(seed, theme)
    truth = [w.reset()] + [w.step(a) for a in actions[: CONTEXT_FRAMES - 1]]
    state = model.init_state(f"a walk in the {theme}")
    model.prefill(state, np.stack(truth), actions[: CONTEXT_FRAMES - 1])
    gen, tru, ms, agent_err = [], [], [], []
    for i in range(steps):
        a = actions[CONTEXT_FRAMES - 1 + i]
        t0 = time.perf_counter()
        frame = model.step([state], [a])[0]
        ms.append((time.perf_counter() - t0) * 1000)
        gt = w.step(a)
        gen.append(frame)
        tru.append(gt)
        found = env.locate_agent(frame, theme)
        cx, cy = env.agent_center(theme, w.state())
        agent_err.append(float(np.hypot(found[0] - cx, found[1] - cy)) if found else float(env.SIZE))
    gen, tru = np.stack(gen), np.stack(tru)
    return {"psnr": [psnr(g, t) for g, t in zip(gen, tru)], "ssim": [ssim(g, t) for g, t in zip(gen, tru)],
            "agent_err": agent_err, "ms": ms, "kv_bytes": model.kv_bytes(state), "flags": collapse_flags(gen, tru),
            "frames": gen, "truth": tru}


def switch_run(model, seed: int, theme: str) -> dict:
    """Roll SWITCH_AFTER steps in `theme`, switch the prompt to the next theme, score the next frames."""
    new_theme = env.THEMES[(env.THEMES.index(theme) + 1) % len(env.THEMES)]
    actions = env.random_actions(CONTEXT_FRAMES - 1 + SWITCH_AFTER + SWITCH_FRAMES, seed)
    w = env.World(seed, theme)
    truth = [w.reset()] + [w.step(a) for a in actions[: CONTEXT_FRAMES - 1]]
    state = model.init_state(f"a walk in the {theme}")
    model.prefill(state, np.stack(truth), actions[: CONTEXT_FRAMES - 1])
    rest = actions[CONTEXT_FRAMES - 1:]
    for a in rest[:SWITCH_AFTER]:
        model.step([state], [a])
        w.step(a)
    t0 = time.perf_counter()
    model.recache(state, f"now it is {new_theme}")
    recache_ms = (time.perf_counter() - t0) * 1000
    w.set_theme(new_theme)
    scores = [psnr(model.step([state], [a])[0], w.step(a)) for a in rest[SWITCH_AFTER:]]
    return {"psnr": scores, "recache_ms": recache_ms, "from": theme, "to": new_theme}


def evaluate(model, seeds, steps: int) -> dict:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not seeds:
        raise ValueError("seeds is empty")
    runs = [rollout_seed(model, s, steps, env.THEMES[s % len(env.THEMES)]) for s in seeds]
    switches = [switch_run(model, s, env.THEMES[s % len(env.THEMES)]) for s in seeds]
    P = np.array([r["psnr"] for r in runs])  # (seeds, steps)
    S = np.array([r["ssim"] for r in runs])
    ms = np.concatenate([r["ms"] for r in runs])
    tail = min(32, steps)
    finite = np.where(np.isfinite(P), P, 100.0)  # a perfect frame counts as 100 dB in means
    return {
        "psnr_step1": float(finite[:, 0].mean()),
        "psnr_mean": float(finite[:, : min(64, steps)].mean()),
        "psnr_mean_all": float(finite.mean()),
        "psnr_tail": float(finite[:, -tail:].mean()),
        "ssim_mean": float(S[:, : min(64, steps)].mean()),
        "agent_err_px": float(np.mean([r["agent_err"][: min(64, steps)] for r in runs])),
        "switch_psnr": float(np.mean([s["psnr"] for s in switches])),
        "switch_psnr_min": float(np.min([s["psnr"] for s in switches])),
        "switch_ms": float(np.median([s["recache_ms"] for s in switches])),
        "collapse": any(r["flags"]["frozen"] or r["flags"]["saturated"] for r in runs),
        "kv_bytes": int(runs[0]["kv_bytes"]),
        "model_ms_p50": float(np.percentile(ms, 50)),
        "model_ms_p95": float(np.percentile(ms, 95)),
        "steps": steps, "seeds": list(seeds),
        "psnr_per_step": [float(v) for v in finite.mean(0)],
        "config": model.describe(),
    }
