"""`worldlab eval`: roll the model out on its own frames against the environment (the ground truth).

Protocol: prefill 8 ground-truth frames of a held-out seed, then N steps under the environment's action
sequence; PSNR/SSIM, agent-position error, collapse checks, a prompt-switch run, a hidden-object run,
kv_bytes, model_ms.

PSNR figures are *pooled*: the PSNR of the mean squared error over every frame a figure summarises, not
the mean of per-frame PSNRs (which a few exact frames inflate without bound). An exact result has no
finite PSNR and JSON carries no infinity, so pooled figures are capped at PSNR_CAP.

Hidden-object run (`occlusion_run`): an object crosses the pillar (7 columns) at 1 px a frame: fully
hidden for 4 frames (t = 10..13), with its last visible edge 4 frames before it comes back. The short
window (4 frames) no longer holds any frame that saw it when it must re-emerge; the long one (16) does.
The re-emergence frames (t = 14..17: position and velocity) are scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from worldlab import env, gallery
from worldlab.model import CONTEXT_FRAMES
from worldlab.model.protocol import describe

SWITCH_AFTER = 16  # steps rolled out before the prompt switch in the switch run
SWITCH_FRAMES = 3  # "within 3 frames of a prompt switch"
HEAD_STEPS = 64  # psnr_mean, ssim_mean, agent_err_px, psnr_per_seed cover the first 64 steps
TAIL_STEPS = 32  # psnr_tail covers the last 32 steps
PSNR_CAP = 100.0  # pooled PSNR of an exact result (JSON has no infinity); also the ceiling of any pooled figure
PEAK = 255.0


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _db(m: float) -> float:
    return float("inf") if m == 0 else float(10 * np.log10(PEAK**2 / m))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Per-frame PSNR in dB; inf for identical frames."""
    return _db(mse(a, b))


def capped_psnr(mse):
    """PSNR of each MSE (array or DataArray), exact ones (MSE 0) at PSNR_CAP so the result stays finite."""
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(PEAK**2 / mse), PSNR_CAP)


def pooled_psnr(mses) -> float:
    """PSNR of the mean MSE over everything given. Exact (mean 0) -> PSNR_CAP; never above it, so a
    near-exact result cannot out-score an exact one."""
    m = np.asarray(mses, dtype=np.float64)
    if m.size == 0:
        raise ValueError("pooled_psnr needs at least one MSE")
    return float(capped_psnr(m.mean()))


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


def theme_for_seed(seed: int) -> str:
    return env.THEMES[seed % len(env.THEMES)]


def _prompt(theme: str) -> str:
    return f"a walk in the {theme}"


def rollout_frames(model, seed: int, steps: int, theme: str):
    """The rollout protocol: prefill CONTEXT_FRAMES ground-truth frames, then `steps` model steps under the
    seed's actions. Returns (session state, iterator of (generated, true frame, model ms, world state))."""
    actions = env.random_actions(CONTEXT_FRAMES - 1 + steps, seed)
    w = env.World(seed, theme)
    truth = [w.reset()] + [w.step(a) for a in actions[: CONTEXT_FRAMES - 1]]
    state = model.init_state(_prompt(theme))
    model.prefill(state, np.stack(truth), actions[: CONTEXT_FRAMES - 1])

    def steps_():
        for a in actions[CONTEXT_FRAMES - 1:]:
            t0 = time.perf_counter()
            frame = model.step([state], [a])[0]
            ms = (time.perf_counter() - t0) * 1000
            yield frame, w.step(a), ms, w.state()

    return state, steps_()


def agent_error(frame: np.ndarray, theme: str, world_state: dict) -> float:
    """Pixels between the agent found in `frame` and its true centre; env.SIZE when it is not found."""
    found = env.locate_agent(frame, theme)
    cx, cy = env.agent_center(theme, world_state)
    return float(np.hypot(found[0] - cx, found[1] - cy)) if found else float(env.SIZE)


def rollout_seed(model, seed: int, steps: int, theme: str) -> dict:
    state, frames = rollout_frames(model, seed, steps, theme)
    gen, tru, ms, agent_err = [], [], [], []
    for frame, gt, t, world_state in frames:
        gen.append(frame)
        tru.append(gt)
        ms.append(t)
        agent_err.append(agent_error(frame, theme, world_state))
    gen, tru = np.stack(gen), np.stack(tru)
    return {"mse": [mse(g, t) for g, t in zip(gen, tru)], "ssim": [ssim(g, t) for g, t in zip(gen, tru)],
            "agent_err": agent_err, "ms": ms, "kv_bytes": model.kv_bytes(state), "flags": collapse_flags(gen, tru),
            "frames": gen, "truth": tru}


def switch_run(model, seed: int, theme: str) -> dict:
    """Roll SWITCH_AFTER steps in `theme`, switch the prompt to the next theme, score the next frames."""
    new_theme = env.THEMES[(env.THEMES.index(theme) + 1) % len(env.THEMES)]
    actions = env.random_actions(CONTEXT_FRAMES - 1 + SWITCH_AFTER + SWITCH_FRAMES, seed)
    w = env.World(seed, theme)
    truth = [w.reset()] + [w.step(a) for a in actions[: CONTEXT_FRAMES - 1]]
    state = model.init_state(_prompt(theme))
    model.prefill(state, np.stack(truth), actions[: CONTEXT_FRAMES - 1])
    rest = actions[CONTEXT_FRAMES - 1:]
    for a in rest[:SWITCH_AFTER]:
        model.step([state], [a])
        w.step(a)
    t0 = time.perf_counter()
    model.recache(state, f"now it is {new_theme}")
    recache_ms = (time.perf_counter() - t0) * 1000
    w.set_theme(new_theme)
    scores = [mse(model.step([state], [a])[0], w.step(a)) for a in rest[SWITCH_AFTER:]]
    return {"mse": scores, "recache_ms": recache_ms, "from": theme, "to": new_theme}


# -- hidden-object run ---------------------------------------------------------------------------------
OCC_LAST = 24  # the run ends at frame 24 (frames 0..7 prefilled, 8..24 generated)
OCC_HIDDEN = range(10, 14)  # frames where object 0 is fully hidden behind the pillar
OCC_SCORED = range(14, 18)  # re-emergence frames scored by occlusion_psnr
OCC_AGENT = (58, 0)  # the agent idles in a corner nothing passes
OCC_THEMES = ("forest", "night")


@dataclass(frozen=True)
class Occlusion:
    """One scripted variant: object 0 crosses the pillar at (vx, vy), |vx| = 1, from `start`; object 1 and
    the agent stay away from it and from the pillar."""

    name: str
    start: tuple[int, int]
    velocity: tuple[int, int]
    other: tuple[int, int]
    other_velocity: tuple[int, int]

    def object_at(self, t: int) -> tuple[int, int]:
        return self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t

    def actions(self) -> list[tuple[str, ...]]:
        """actions[i] produces frame i + 1 (no keys: the agent idles)."""
        return [()] * OCC_LAST

    def world(self, theme: str) -> env.World:
        w = env.World(0, theme)
        w.place(OCC_AGENT, [self.start, self.other], [self.velocity, self.other_velocity])
        return w


def _variant(vx: int, vy: int) -> Occlusion:
    # Rightwards from x 30 / leftwards from x 53: fully behind columns 40..46 at t = 10..13 either way.
    x = 30 if vx > 0 else 53
    y = 4 if vy == 2 else 14 if vy == 1 else 46 if vy == -1 else 56  # no wall within OCC_LAST frames
    other, other_v = ((2, 58), (1, -1)) if vy > 0 else ((2, 2), (1, 1))  # the opposite corner
    return Occlusion(f"{'right' if vx > 0 else 'left'}{vy:+d}", (x, y), (vx, vy), other, other_v)


OCCLUSION_VARIANTS = tuple(_variant(vx, vy) for vx in (1, -1) for vy in (2, 1, -1, -2))


def occlusion_run(model, variant: Occlusion, theme: str = OCC_THEMES[0]) -> dict:
    """Prefill frames 0..7 of the variant, generate frames 8..OCC_LAST; per-frame MSE by frame index."""
    w, actions = variant.world(theme), variant.actions()
    truth = [w.render()] + [w.step(a) for a in actions[: CONTEXT_FRAMES - 1]]
    state = model.init_state(_prompt(theme))
    model.prefill(state, np.stack(truth), actions[: CONTEXT_FRAMES - 1])
    errors = {}
    for t, a in enumerate(actions[CONTEXT_FRAMES - 1:], start=CONTEXT_FRAMES):
        errors[t] = mse(model.step([state], [a])[0], w.step(a))
    return {"variant": variant.name, "theme": theme, "mse": errors}


def occlusion_scores(model) -> dict:
    """Every variant in every OCC_THEMES theme: pooled PSNR over the re-emergence frames and over all."""
    runs = [occlusion_run(model, v, th) for v in OCCLUSION_VARIANTS for th in OCC_THEMES]
    scored = [m for r in runs for t, m in r["mse"].items() if t in OCC_SCORED]
    every = [m for r in runs for m in r["mse"].values()]
    return {"occlusion_psnr": pooled_psnr(scored), "occlusion_psnr_all": pooled_psnr(every)}


# -- the whole evaluation ------------------------------------------------------------------------------
def check_request(seeds, steps, gallery_path=None) -> None:
    """Reject bad arguments before any model work."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not seeds:
        raise ValueError("seeds is empty")
    bad = [s for s in seeds if not isinstance(s, (int, np.integer)) or s < 0]
    if bad:
        raise ValueError(f"seeds must be non-negative integers, got {bad[0]!r}")
    if gallery_path is not None:
        gallery.check_path(gallery_path)


def _fidelity(runs, switches, steps: int) -> dict:
    M = np.array([r["mse"] for r in runs])  # (seeds, steps)
    head, tail = min(HEAD_STEPS, steps), min(TAIL_STEPS, steps)
    sw = np.array([s["mse"] for s in switches])  # (seeds, SWITCH_FRAMES)
    return {
        "psnr_step1": pooled_psnr(M[:, 0]),
        "psnr_mean": pooled_psnr(M[:, :head]),
        "psnr_mean_all": pooled_psnr(M),
        "psnr_tail": pooled_psnr(M[:, -tail:]),
        "ssim_mean": float(np.mean([r["ssim"][:head] for r in runs])),
        "agent_err_px": float(np.mean([r["agent_err"][:head] for r in runs])),
        "switch_psnr": pooled_psnr(sw),
        "switch_psnr_min": min(pooled_psnr(row) for row in sw),
        "psnr_per_step": [pooled_psnr(col) for col in M.T],
        "psnr_per_seed": [pooled_psnr(row[:head]) for row in M],
    }


def _collapse(runs, seeds) -> dict:
    bad = [{"seed": int(s), "flags": [k for k, on in r["flags"].items() if on]} for s, r in zip(seeds, runs)]
    bad = [b for b in bad if b["flags"]]
    return {"collapse": bool(bad), "collapse_seeds": bad}


def evaluate(model, seeds, steps: int, gallery_path=None) -> dict:
    """The figures of `worldlab eval`; with gallery_path, also a PNG of truth vs model frames per seed."""
    return evaluate_runs(model, seeds, steps, gallery_path)[0]


def evaluate_runs(model, seeds, steps: int, gallery_path=None) -> tuple[dict, list[dict]]:
    """evaluate()'s figures and the per-seed rollouts behind them (rollout_seed's dicts, in seed order)."""
    check_request(seeds, steps, gallery_path)
    seeds = [int(s) for s in seeds]
    runs = [rollout_seed(model, s, steps, theme_for_seed(s)) for s in seeds]
    switches = [switch_run(model, s, theme_for_seed(s)) for s in seeds]
    ms = np.concatenate([r["ms"] for r in runs])
    res = {
        **_fidelity(runs, switches, steps),
        **occlusion_scores(model),
        "switch_ms": float(np.median([s["recache_ms"] for s in switches])),
        **_collapse(runs, seeds),
        "kv_bytes": int(runs[0]["kv_bytes"]),
        "model_ms_p50": float(np.percentile(ms, 50)),
        "model_ms_p95": float(np.percentile(ms, 95)),
        "steps": int(steps), "seeds": seeds,
        "config": describe(model),
    }
    if gallery_path is not None:
        rows = [(s, r["truth"], r["frames"]) for s, r in zip(seeds, runs)]
        res["gallery"] = str(gallery_path)
        res["gallery_steps"] = gallery.write_gallery(gallery_path, rows)
    return res, runs
