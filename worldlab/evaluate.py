"""`worldlab eval`: roll the model out on its own frames against the environment (the ground truth).

Protocol: prefill 8 ground-truth frames of a held-out seed, then N steps under the environment's action
sequence; PSNR/SSIM, agent-position error, collapse checks, a prompt-switch run, a hidden-object run,
kv_bytes, model_ms.

PSNR figures are *pooled*: the PSNR of the mean squared error over every frame a figure summarises, not
the mean of per-frame PSNRs (which a few exact frames inflate without bound). An exact result has no
finite PSNR and JSON carries no infinity, so pooled figures are capped at PSNR_CAP.

Figures that can fail (worldlab.fidelity): sharpness ratio and `sharp` (a blur fails), the share of
bit-exact frames, persistence PSNR (pixels where the truth differs from the mean frame), the colour-histogram
distance after the prompt switch, and 95 % bootstrap intervals over seeds (`*_ci`; null with one seed).
`baselines` holds the same figures, measured in the same run on the same seeds and keys, for copy-last
(the last prefilled frame held), the mean frame (per theme, over MEAN_SEEDS) and the no-objects painter
(worldlab.model.painter); each with `model_gap_psnr_mean_ci`, the paired interval of the model's psnr_mean
minus the baseline's (an interval holding 0 is no difference).

Hidden-object run (`occlusion_run`): an object crosses the pillar (7 columns) at 1 px a frame: fully
hidden for 4 frames (t = 10..13), with its last visible edge 4 frames before it comes back. The short
window (4 frames) no longer holds any frame that saw it when it must re-emerge; the long one (16) does.
The re-emergence frames (t = 14..17: position and velocity) are scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from worldlab import env, gallery
from worldlab.engine.metrics import percentile
from worldlab.fidelity import (bootstrap_ci, bootstrap_pooled_psnr, bootstrap_psnr_gap, copy_last_baseline,
                               exact_share, histogram_distance, is_sharp, mean_frame, mean_frame_baseline,
                               persistence_psnr, sharpness_ratio, ssim_per_frame)
# The metrics live in worldlab.fidelity; evaluate re-exports the ones its callers have always imported from here.
from worldlab.fidelity import PEAK, PSNR_CAP, capped_psnr, mse, pooled_psnr, psnr, ssim  # noqa: F401
from worldlab.model import CONTEXT_FRAMES
from worldlab.model.painter import painter
from worldlab.model.protocol import describe

SWITCH_AFTER = 16  # steps rolled out before the prompt switch in the switch run
SWITCH_FRAMES = 3  # "within 3 frames of a prompt switch"
HEAD_STEPS = 64  # psnr_mean, ssim_mean, agent_err_px, psnr_per_seed cover the first 64 steps
TAIL_STEPS = 32  # psnr_tail covers the last 32 steps
MEAN_SEEDS = range(1000, 1016)  # training-like seeds (training uses >= 1000) behind the mean-frame baseline
MEAN_STEPS = 64  # frames rolled per mean seed after its reset frame


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


def score_frames(gen: np.ndarray, tru: np.ndarray, theme: str, world_states) -> dict:
    """Per-frame scores of generated frames against the truth (a model's or a baseline's, same code)."""
    return {"mse": [mse(g, t) for g, t in zip(gen, tru)], "ssim": ssim_per_frame(gen, tru).tolist(),
            "agent_err": [agent_error(f, theme, ws) for f, ws in zip(gen, world_states)],
            "flags": collapse_flags(gen, tru), "frames": gen, "truth": tru}


def rollout_seed(model, seed: int, steps: int, theme: str) -> dict:
    state, frames = rollout_frames(model, seed, steps, theme)
    gen, tru, ms, world_states = [], [], [], []
    for frame, gt, t, world_state in frames:
        gen.append(frame)
        tru.append(gt)
        ms.append(t)
        world_states.append(world_state)
    return {**score_frames(np.stack(gen), np.stack(tru), theme, world_states), "ms": ms,
            "kv_bytes": model.kv_bytes(state), "states": world_states, "theme": theme,
            "context_last": context_last_frame(seed, theme)}


def context_last_frame(seed: int, theme: str) -> np.ndarray:
    """The last ground-truth frame prefilled before a rollout of `seed` (what copy-last holds)."""
    return env.rollout(seed, theme, env.random_actions(CONTEXT_FRAMES - 1, seed))[-1]


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
    gen = np.stack([model.step([state], [a])[0] for a in rest[SWITCH_AFTER:]])
    tru = np.stack([w.step(a) for a in rest[SWITCH_AFTER:]])
    return {"mse": [mse(g, t) for g, t in zip(gen, tru)], "recache_ms": recache_ms, "from": theme, "to": new_theme,
            "frames": gen, "truth": tru, "context_last": truth[-1]}


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


def _interval(ci) -> list[float] | None:
    """JSON form of a (lo, hi) interval: None when it is undefined (one seed)."""
    return None if np.isnan(ci[0]) else [ci[0], ci[1]]


def _finite(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _quality(runs, switches, steps: int) -> dict:
    """The figures that blur and luck cannot pass: SSIM/sharpness/exact share/persistence/colour statistics
    after a switch, and 95 % bootstrap intervals over seeds for the headline figures."""
    M = np.array([r["mse"] for r in runs])  # (seeds, steps)
    head, tail = min(HEAD_STEPS, steps), min(TAIL_STEPS, steps)
    gen, tru = np.stack([r["frames"] for r in runs]), np.stack([r["truth"] for r in runs])  # (S, T, H, W, 3)
    means = np.stack([training_mean_frame(r["theme"]) for r in runs])[:, None]  # (S, 1, H, W, 3)
    sw_gen, sw_tru = np.stack([s["frames"] for s in switches]), np.stack([s["truth"] for s in switches])
    return {
        "psnr_mean_ci": _interval(bootstrap_pooled_psnr(M[:, :head])),
        "psnr_tail_ci": _interval(bootstrap_pooled_psnr(M[:, -tail:])),
        "switch_psnr_ci": _interval(bootstrap_pooled_psnr([s["mse"] for s in switches])),
        "ssim_mean_ci": _interval(bootstrap_ci([np.mean(r["ssim"][:head]) for r in runs])),
        "agent_err_px_ci": _interval(bootstrap_ci([np.mean(r["agent_err"][:head]) for r in runs])),
        "sharpness_ratio": sharpness_ratio(gen[:, :head], tru[:, :head]),
        "sharp": is_sharp(gen[:, :head], tru[:, :head]),
        "sharpness_ratio_last": sharpness_ratio(gen[:, -1], tru[:, -1]),
        "sharp_last": is_sharp(gen[:, -1], tru[:, -1]),
        "exact_share": exact_share(gen.reshape(-1, *gen.shape[2:]), tru.reshape(-1, *tru.shape[2:])),
        "persistence_psnr": _finite(persistence_psnr(gen[:, :head], tru[:, :head], means)),
        "switch_hist_dist": histogram_distance(sw_gen, sw_tru),
    }


@lru_cache(maxsize=None)
def training_mean_frame(theme: str) -> np.ndarray:
    """The mean frame of `theme` over MEAN_SEEDS rollouts (training-like seeds, never evaluated on)."""
    frames = [env.rollout(s, theme, env.random_actions(MEAN_STEPS, s)) for s in MEAN_SEEDS]
    return mean_frame(np.concatenate(frames))


def _array_baseline(runs, switches, predict) -> tuple[list[dict], list[dict]]:
    """Runs and switch runs of a baseline given as arrays: predict(theme, context_last, n) -> (n, H, W, 3)."""
    b_runs = [{**score_frames(predict(r["theme"], r["context_last"], len(r["truth"])), r["truth"], r["theme"],
                              r["states"]), "theme": r["theme"]} for r in runs]
    b_switches = []
    for s in switches:
        gen = predict(s["to"], s["context_last"], len(s["truth"]))
        b_switches.append({"mse": [mse(g, t) for g, t in zip(gen, s["truth"])], "frames": gen, "truth": s["truth"]})
    return b_runs, b_switches


def baseline_runs(seeds, steps: int, runs, switches) -> dict:
    """Each trivial baseline's (runs, switch runs) on the same seeds, truth and keys as the model's."""
    return {
        "copy_last": _array_baseline(runs, switches, lambda theme, last, n: copy_last_baseline(last, n)),
        "mean_frame": _array_baseline(runs, switches,
                                      lambda theme, last, n: mean_frame_baseline(training_mean_frame(theme), n)),
        "painter": ([rollout_seed(painter(), s, steps, theme_for_seed(s)) for s in seeds],
                    [switch_run(painter(), s, theme_for_seed(s)) for s in seeds]),
    }


def _baseline_figures(model_runs, b_runs, b_switches, steps: int) -> dict:
    figures = {k: v for k, v in _fidelity(b_runs, b_switches, steps).items() if k != "psnr_per_step"}
    head = min(HEAD_STEPS, steps)
    gap = bootstrap_psnr_gap([r["mse"][:head] for r in model_runs], [r["mse"][:head] for r in b_runs])
    return {**figures, **_quality(b_runs, b_switches, steps), "model_gap_psnr_mean_ci": _interval(gap)}


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
    baselines = baseline_runs(seeds, steps, runs, switches)
    res = {
        **_fidelity(runs, switches, steps),
        **_quality(runs, switches, steps),
        "baselines": {name: _baseline_figures(runs, *b, steps) for name, b in baselines.items()},
        **occlusion_scores(model),
        "switch_ms": float(np.median([s["recache_ms"] for s in switches])),
        **_collapse(runs, seeds),
        "kv_bytes": int(runs[0]["kv_bytes"]),
        "model_ms_p50": percentile(ms, 50),
        "model_ms_p95": percentile(ms, 95),
        "steps": int(steps), "seeds": seeds,
        "config": describe(model),
    }
    if gallery_path is not None:
        rows = [(s, r["truth"], r["frames"]) for s, r in zip(seeds, runs)]
        res["gallery"] = str(gallery_path)
        res["gallery_steps"] = gallery.write_gallery(gallery_path, rows)
    return res, runs
