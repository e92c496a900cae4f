"""Long-horizon drift: PSNR, colour statistics and agent error vs step over thousands of generated frames,
with and without the drift anchor (the attention-sink frames), short vs long window, KV compression on/off.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import xarray as xr

from worldlab import env
from worldlab.config import TOGGLE_CHOICES, Toggles
from worldlab.evaluate import (PSNR_CAP, agent_error, capped_psnr, check_request, mse, pooled_psnr, rollout_frames,
                               theme_for_seed)
from worldlab.experiments.provenance import now, provenance
from worldlab.model.protocol import describe

ANCHORS = ("sink", "none")
ANCHOR_DEFINITION = ("sink: the checkpoint's attention-sink frames (cfg.sink) are kept forever, the StreamingLLM / "
                     "LongLive frame sink; none: sink = 0, a pure sliding window over the last `window` frames")
CONFIG_DIMS = ("anchor", "window", "kv")
CHOICES = {"anchor": ANCHORS, "window": TOGGLE_CHOICES["window"], "kv": TOGGLE_CHOICES["kv"]}
HEAD_STEPS = 64  # psnr_head: the first 64 steps (as `worldlab eval`'s psnr_mean)
TAIL_STEPS = 256  # psnr_tail and the colour summaries: the last 256 steps
CHANNELS = ("r", "g", "b")
OFF_PALETTE = 6  # class index of a pixel that is none of the theme's six colours
SMOOTH_STEPS = 32
WIDE, TALL = 760, 320


# -- colour statistics -----------------------------------------------------------------------------
def _rgb_key(pixels: np.ndarray) -> np.ndarray:
    p = pixels.astype(np.int32)
    return (p[..., 0] << 16) | (p[..., 1] << 8) | p[..., 2]


def palette_classes(frame: np.ndarray, theme: str) -> np.ndarray:
    """Per-pixel index into the theme's palette (0..5), OFF_PALETTE for any other colour."""
    keys = _rgb_key(env.palette(theme))
    hit = _rgb_key(frame)[..., None] == keys
    return np.where(hit.any(-1), hit.argmax(-1), OFF_PALETTE)


def palette_histogram(frame: np.ndarray, theme: str) -> np.ndarray:
    """(7,) fraction of pixels of each palette colour, last = off-palette."""
    counts = np.bincount(palette_classes(frame, theme).ravel(), minlength=OFF_PALETTE + 1)
    return counts / counts.sum()


def colour_stats(frame: np.ndarray, truth: np.ndarray, theme: str) -> dict:
    """Mean RGB of both frames, total-variation distance of their palette histograms, off-palette fraction."""
    h_model, h_truth = palette_histogram(frame, theme), palette_histogram(truth, theme)
    return {"mean_rgb_model": frame.reshape(-1, 3).mean(0), "mean_rgb_truth": truth.reshape(-1, 3).mean(0),
            "palette_tv": 0.5 * float(np.abs(h_model - h_truth).sum()), "off_palette": float(h_model[OFF_PALETTE])}


# -- one rollout -----------------------------------------------------------------------------------
def drift_rollout(model, seed: int, steps: int) -> dict:
    """evaluate's rollout protocol without SSIM (which would cost ~5x the model here) and without keeping
    frames: per-step statistics only."""
    theme = theme_for_seed(seed)
    state, frames = rollout_frames(model, seed, steps, theme)
    rows, ms = [], []
    for frame, gt, t, world_state in frames:
        ms.append(t)
        rows.append({"mse": mse(frame, gt), "agent_err_px": agent_error(frame, theme, world_state),
                     **colour_stats(frame, gt, theme)})
    out = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}
    return {**out, "model_ms": np.array(ms), "kv_bytes": int(model.kv_bytes(state))}


# -- the grid ----------------------------------------------------------------------------------------
def check_configs(configs) -> dict:
    """{"anchor": [...], "window": [...], "kv": [...]}: every name present, values known, no repeats."""
    if not isinstance(configs, dict) or set(configs) != set(CONFIG_DIMS):
        got = sorted(configs) if isinstance(configs, dict) else type(configs).__name__
        raise ValueError(f"configs must map exactly {list(CONFIG_DIMS)} to lists of values, got {got}")
    out = {}
    for name in CONFIG_DIMS:
        given = configs[name]
        values = [given] if isinstance(given, str) else list(given) if isinstance(given, list | tuple) else []
        bad = [v for v in values if v not in CHOICES[name]]
        if not values or bad or len(set(values)) != len(values):
            raise ValueError(f"configs[{name!r}] must be distinct values of {CHOICES[name]}, got {given!r}")
        out[name] = values
    return out


def load_drift_model(anchor: str, window: str, kv: str, *, weights: str = "fp32", checkpoint=None):
    """The shipped (or given) checkpoint under the toggles; anchor "none" sets the attention sink to 0."""
    from worldlab.model import load_model

    return load_model(checkpoint, weights=weights, window=window, kv=kv, sink=None if anchor == "sink" else 0)


def measure_drift(seeds, steps: int, configs, checkpoint=None, *, weights: str = "fp32",
                  model_for=None) -> xr.Dataset:
    """Roll every seed out for `steps` frames under every (anchor, window, kv) of the `configs` grid.

    model_for(anchor, window, kv) -> WorldModel replaces the checkpoint (tests pass an oracle)."""
    check_request(seeds, steps)
    grid = check_configs(configs)
    Toggles(weights=weights)
    seeds = [int(s) for s in seeds]
    started, started_at = time.time(), now()
    load = model_for or (lambda a, w, k: load_drift_model(a, w, k, weights=weights, checkpoint=checkpoint))
    runs, described = {}, {}
    for point in itertools.product(*grid.values()):
        model = load(*point)
        described[point] = describe(model)
        runs[point] = [drift_rollout(model, s, steps) for s in seeds]
    ds = _dataset(grid, seeds, steps, runs)
    sink = [int(described[p].get("sink", -1)) for p in itertools.product(*grid.values())]
    ds["sink_frames"] = (CONFIG_DIMS, np.array(sink).reshape(ds["kv_bytes"].shape[:3]))
    ds["sink_frames"].attrs["long_name"] = "attention-sink frames kept forever (-1: the model has no KV cache)"
    first = next(iter(described.values()))
    ds.attrs.update(provenance(checkpoint, started_at=started_at))
    ds.attrs.update({"steps": int(steps), "seeds": seeds, "weights": weights, "model": str(first.get("model", "tiny")),
                     "head_steps": min(HEAD_STEPS, steps), "tail_steps": min(TAIL_STEPS, steps),
                     "anchor_definition": ANCHOR_DEFINITION, "elapsed_s": round(time.time() - started, 2)})
    return ds


def _dataset(grid: dict, seeds: list, steps: int, runs: dict) -> xr.Dataset:
    shape = tuple(len(v) for v in grid.values())
    lead = (*CONFIG_DIMS, "seed")

    def stack(key):
        first = runs[next(iter(runs))][0][key]
        arr = np.array([[r[key] for r in runs[p]] for p in itertools.product(*grid.values())])
        return arr.reshape(*shape, len(seeds), *np.shape(first))

    data = {k: ((*lead, "step"), stack(k)) for k in ("mse", "agent_err_px", "palette_tv", "off_palette", "model_ms")}
    data["psnr"] = ((*lead, "step"), capped_psnr(stack("mse")))
    for k in ("mean_rgb_model", "mean_rgb_truth"):
        data[k] = ((*lead, "step", "channel"), stack(k))
    data["kv_bytes"] = (lead, stack("kv_bytes"))
    ds = xr.Dataset(data, coords={**grid, "seed": seeds, "step": np.arange(1, steps + 1), "channel": list(CHANNELS)})
    ds = _add_summaries(ds, min(HEAD_STEPS, steps), min(TAIL_STEPS, steps))
    _describe_vars(ds)
    return ds


def _pooled(mse: xr.DataArray, dims) -> xr.DataArray:
    return xr.apply_ufunc(pooled_psnr, mse, input_core_dims=[list(dims)], vectorize=True)


def rgb_shift(ds: xr.Dataset) -> xr.DataArray:
    """Euclidean distance between the generated and the true frame's mean colour (RGB units, 0..441)."""
    return np.sqrt(((ds["mean_rgb_model"] - ds["mean_rgb_truth"]) ** 2).sum("channel"))


def first_wrong_step(mse: xr.DataArray) -> xr.DataArray:
    """First step whose generated frame differs from the truth; NaN when every frame is exact."""
    wrong = mse > 0
    return (wrong.argmax("step") + 1).astype(float).where(wrong.any("step"))


def _add_summaries(ds: xr.Dataset, head: int, tail: int) -> xr.Dataset:
    first, last = ds.isel(step=slice(0, head)), ds.isel(step=slice(-tail, None))
    shift = rgb_shift(ds)
    return ds.assign(
        psnr_pooled=_pooled(ds["mse"], ["seed"]),
        psnr_head=_pooled(first["mse"], ["seed", "step"]),
        psnr_tail=_pooled(last["mse"], ["seed", "step"]),
        psnr_all=_pooled(ds["mse"], ["seed", "step"]),
        rgb_shift=shift,
        rgb_shift_tail=shift.isel(step=slice(-tail, None)).mean(("seed", "step")),
        palette_tv_tail=last["palette_tv"].mean(("seed", "step")),
        off_palette_max=ds["off_palette"].max(("seed", "step")),
        agent_err_px_mean=ds["agent_err_px"].mean(("seed", "step")),
        first_wrong_step=first_wrong_step(ds["mse"]),
        model_ms_p50=ds["model_ms"].quantile(0.5, ("seed", "step")).drop_vars("quantile"),
    )


DESCRIPTIONS = {
    "mse": ("mean squared error vs the environment frame (0..255 scale)", ""),
    "psnr": (f"per-frame PSNR (exact frames = {PSNR_CAP:g})", "dB"),
    "psnr_pooled": ("PSNR of the seed-mean MSE at each step (capped)", "dB"),
    "psnr_head": ("pooled PSNR over seeds and the first head_steps steps", "dB"),
    "psnr_tail": ("pooled PSNR over seeds and the last tail_steps steps", "dB"),
    "psnr_all": ("pooled PSNR over seeds and all steps", "dB"),
    "mean_rgb_model": ("mean colour of the generated frame", "RGB 0..255"),
    "mean_rgb_truth": ("mean colour of the true frame", "RGB 0..255"),
    "rgb_shift": ("distance between generated and true mean colour", "RGB 0..255"),
    "rgb_shift_tail": ("rgb_shift averaged over seeds and the last tail_steps steps", "RGB 0..255"),
    "palette_tv": ("total-variation distance of the palette-colour histograms (6 theme colours + other)", "0..1"),
    "palette_tv_tail": ("palette_tv averaged over seeds and the last tail_steps steps", "0..1"),
    "off_palette": ("fraction of generated pixels that are no colour of the theme", "0..1"),
    "off_palette_max": ("largest off_palette over seeds and steps", "0..1"),
    "agent_err_px": ("distance of the generated agent's centroid from the true agent centre", "px"),
    "agent_err_px_mean": ("agent_err_px averaged over seeds and steps", "px"),
    "first_wrong_step": ("first step whose frame differs from the truth (NaN: all exact)", "step"),
    "model_ms": ("model step time", "ms"),
    "model_ms_p50": ("median model step time", "ms"),
    "kv_bytes": ("KV cache bytes of the session", "bytes"),
}


def _describe_vars(ds: xr.Dataset) -> None:
    for name, (text, unit) in DESCRIPTIONS.items():
        ds[name].attrs["long_name"] = text
        if unit:
            ds[name].attrs["units"] = unit
    ds["anchor"].attrs["long_name"] = "drift anchor: sink = attention-sink frames kept forever, none = sink 0"


# -- figures -------------------------------------------------------------------------------------------
def config_points(ds: xr.Dataset) -> list[tuple[dict, str]]:
    """(sel indexer, "anchor sink / short / kv none") for every configuration in the dataset."""
    values = [ds[d].values.tolist() for d in CONFIG_DIMS]
    return [(dict(zip(CONFIG_DIMS, p)), f"anchor {p[0]} / {p[1]} / kv {p[2]}") for p in itertools.product(*values)]


def smoothed_psnr(mse: xr.DataArray, smooth: int) -> xr.DataArray:
    """PSNR of the MSE pooled over seeds and a trailing window of `smooth` steps, capped."""
    return capped_psnr(mse.mean("seed").rolling(step=smooth, min_periods=1).mean())


def _overlay(ds, series, ylabel: str, title: str, logx: bool, ylim=(None, None)):
    import holoviews as hv

    x, y = hv.Dimension("step", label="step"), hv.Dimension("y", label=ylabel)
    curves = [hv.Curve((ds["step"].values, series(ds.sel(point)).values), x, y, label=label)
              .opts(line_width=2, tools=["hover"], backend="bokeh") for point, label in config_points(ds)]
    return hv.Overlay(curves).opts(width=WIDE, height=TALL, logx=logx, show_grid=True, legend_position="right",
                                   title=title, ylim=ylim, backend="bokeh")


def _psnr_ylim(psnr: np.ndarray) -> tuple:
    """Exact stretches at the 100 dB cap would squash the measured range into a sliver: clip them off the top."""
    below = psnr[psnr < PSNR_CAP]
    return (None, None) if below.size == 0 else (float(below.min()) - 1, float(below.max()) + 3)


def drift_plots(ds: xr.Dataset, smooth: int = SMOOTH_STEPS, logx: bool = False):
    """PSNR, palette-histogram distance and mean-colour shift vs step, one curve per configuration,
    each pooled (PSNR) or averaged over seeds and a trailing window of `smooth` steps."""
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh backend the options name)

    if not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth must be an int >= 1 step, got {smooth!r}")
    roll = lambda da: da.mean("seed").rolling(step=smooth, min_periods=1).mean()  # noqa: E731
    over = f"seeds and {smooth} steps"
    ylim = _psnr_ylim(smoothed_psnr(ds["mse"], smooth).values)
    return hv.Layout([
        _overlay(ds, lambda p: smoothed_psnr(p["mse"], smooth), f"PSNR pooled over {over} (dB)",
                 f"PSNR vs step (exact = {PSNR_CAP:g} dB, off the top)", logx, ylim),
        _overlay(ds, lambda p: roll(p["palette_tv"]), "palette histogram TV distance",
                 "Colour: palette-histogram distance to the truth vs step", logx),
        _overlay(ds, lambda p: roll(rgb_shift(p)), "mean-colour shift (RGB units)",
                 "Colour: shift of the frame's mean RGB vs step", logx),
    ]).cols(1)


def summary_table(ds: xr.Dataset):
    """One row per configuration: the summary scalars (pandas DataFrame)."""
    import pandas as pd

    cols = ("psnr_head", "psnr_tail", "psnr_all", "palette_tv_tail", "rgb_shift_tail", "off_palette_max",
            "agent_err_px_mean", "model_ms_p50")
    rows = []
    for point, label in config_points(ds):
        sub = ds.sel(point)
        row = {"configuration": label, **{c: float(sub[c]) for c in cols}}
        row["first_wrong_step"] = ", ".join("-" if np.isnan(v) else str(int(v)) for v in sub["first_wrong_step"].values)
        row["kv_bytes"] = int(sub["kv_bytes"].max())
        rows.append(row)
    return pd.DataFrame(rows).set_index("configuration")
