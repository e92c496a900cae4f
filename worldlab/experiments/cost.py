"""The seed's parametric cost model: GPU compute minutes, egress GB and orchestration overhead per session,
and cost per session-hour across concurrency levels and quality presets. Prices are always the caller's.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

import numpy as np
import xarray as xr


def _check(name: str, value, *, low: float = 0.0, high: float = math.inf, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v > high or v < low or (open_low and v == low):
        bound = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number in {bound}, got {value!r}")
    return v


def compute_minutes(fps: float, seconds: float, ms_per_frame: float, utilization: float) -> float:
    """GPU-minutes a session of `seconds` costs: fps × seconds × ms_per_frame / 1000 / utilization / 60.

    fps × seconds frames, each ms_per_frame GPU-ms; dividing by utilization bills the idle share of the GPU.
    """
    fps = _check("fps", fps, open_low=True)
    seconds = _check("seconds", seconds)
    ms_per_frame = _check("ms_per_frame", ms_per_frame, open_low=True)
    utilization = _check("utilization", utilization, high=1.0, open_low=True)
    return fps * seconds * ms_per_frame / 1000 / utilization / 60


def egress_gb(bitrate_mbps: float, seconds: float, viewers: int = 1) -> float:
    """GB sent for one session: bitrate_Mbps × seconds / 8 / 1024 × viewers (the seed's formula: Mbit -> MB
    by /8, MB -> GB by /1024). `viewers` counts every receiver of the stream, the player included."""
    bitrate_mbps = _check("bitrate_mbps", bitrate_mbps)
    seconds = _check("seconds", seconds)
    if isinstance(viewers, bool) or not isinstance(viewers, int | np.integer) or viewers < 1:
        raise ValueError(f"viewers must be an integer >= 1 (the player counts), got {viewers!r}")
    return bitrate_mbps * seconds / 8 / 1024 * int(viewers)


@dataclass(frozen=True)
class Prices:
    """What the caller pays; there are no defaults on purpose (prices vary by provider, region and date)."""

    gpu_usd_per_hour: float
    egress_usd_per_gb: float
    relay_premium_usd_per_gb: float = 0.0  # extra per GB carried by a TURN relay on top of egress

    def __post_init__(self):
        for name in ("gpu_usd_per_hour", "egress_usd_per_gb", "relay_premium_usd_per_gb"):
            _check(name, getattr(self, name))


@dataclass(frozen=True)
class Overheads:
    """Orchestration: idle headroom + cold starts + TURN relay % × relay premium.

    idle_headroom: warm spare GPU capacity as a fraction of the busy capacity (0.2 = 20 % extra GPUs).
    cold_starts_per_gpu_hour and cold_start_s: scale-up events per GPU-hour, each billing cold_start_s of GPU
    time before it serves. relay_pct: percent of sessions whose media goes through TURN."""

    idle_headroom: float = 0.0
    cold_starts_per_gpu_hour: float = 0.0
    cold_start_s: float = 0.0
    relay_pct: float = 0.0

    def __post_init__(self):
        _check("idle_headroom", self.idle_headroom)
        _check("cold_starts_per_gpu_hour", self.cold_starts_per_gpu_hour)
        _check("cold_start_s", self.cold_start_s, high=3600.0)
        _check("relay_pct", self.relay_pct, high=100.0)


def gpus_needed(concurrency: int, fps: float, ms_per_frame: float, utilization: float) -> int:
    """Whole GPUs to serve `concurrency` sessions with none busier than `utilization` (at least one)."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int | np.integer) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    # GPU-minutes one session needs per wall-clock minute = GPUs it keeps busy (at `utilization`).
    busy_gpus = int(concurrency) * compute_minutes(fps, 60.0, ms_per_frame, utilization)
    return max(1, math.ceil(busy_gpus - 1e-9))


def overhead_usd(gpus: int, egress: float, prices: Prices, overheads: Overheads) -> dict:
    """The three orchestration terms for one hour of a fleet of `gpus` that sent `egress` GB, in USD."""
    return {
        "headroom_usd": overheads.idle_headroom * gpus * prices.gpu_usd_per_hour,
        "cold_start_usd": gpus * overheads.cold_starts_per_gpu_hour * overheads.cold_start_s / 3600
        * prices.gpu_usd_per_hour,
        "relay_usd": overheads.relay_pct / 100 * egress * prices.relay_premium_usd_per_gb,
    }


def session_hour_cost(concurrency: int, *, fps: float, ms_per_frame: float, bitrate_kbps: float,
                      utilization: float, prices: Prices, overheads: Overheads = Overheads(),
                      viewers: int = 1) -> dict:
    """USD per session-hour, by term, with `concurrency` sessions sharing whole GPUs for one hour."""
    gpus = gpus_needed(concurrency, fps, ms_per_frame, utilization)
    egress = egress_gb(_check("bitrate_kbps", bitrate_kbps) / 1000, 3600.0, viewers) * concurrency
    terms = {"compute_usd": gpus * prices.gpu_usd_per_hour, "egress_usd": egress * prices.egress_usd_per_gb,
             **overhead_usd(gpus, egress, prices, overheads)}
    per_session = {k: v / concurrency for k, v in terms.items()}
    per_session["total_usd"] = sum(per_session.values())
    per_session["gpus"] = gpus
    return per_session


TERMS = ("compute_usd", "egress_usd", "headroom_usd", "cold_start_usd", "relay_usd", "total_usd")


def cost_table(presets: dict, concurrency, *, fps: float, utilization: float, prices: Prices,
               overheads: Overheads = Overheads(), viewers: int = 1) -> xr.Dataset:
    """Cost per session-hour over (preset, concurrency). `presets` maps a quality preset name to
    {"ms_per_frame": ..., "bitrate_kbps": ...} (measured figures).

    Units: fps in frames/s; seconds of session time; ms_per_frame = GPU milliseconds spent per generated frame of
    one session (a batched step's time divided by its batch); utilization = the fraction of a GPU's time it is
    kept busy, in (0, 1]; bitrate in Mbit/s (kbit/s where named so); prices in USD per GPU-hour and per GB.
    """
    if not presets:
        raise ValueError("presets must name at least one quality preset")
    levels = list(concurrency)
    if not levels:
        raise ValueError("concurrency must list at least one level")
    names = list(presets)
    out = {k: np.zeros((len(names), len(levels))) for k in (*TERMS, "gpus")}
    for i, name in enumerate(names):
        p = presets[name]
        if not isinstance(p, dict) or set(p) != {"ms_per_frame", "bitrate_kbps"}:
            raise ValueError(f"preset {name!r} must be a dict with exactly ms_per_frame and bitrate_kbps")
        for j, n in enumerate(levels):
            row = session_hour_cost(n, fps=fps, ms_per_frame=p["ms_per_frame"], bitrate_kbps=p["bitrate_kbps"],
                                    utilization=utilization, prices=prices, overheads=overheads, viewers=viewers)
            for k in out:
                out[k][i, j] = row[k]
    dims = ("preset", "concurrency")
    ds = xr.Dataset({k: (dims, v) for k, v in out.items()},
                    coords={"preset": names, "concurrency": np.array(levels, dtype=np.int64)})
    ds["gpus"] = ds["gpus"].astype(np.int64)
    ds["fleet_usd_per_hour"] = ds["total_usd"] * ds["concurrency"]
    ds["ms_per_frame"] = ("preset", [float(presets[n]["ms_per_frame"]) for n in names])
    ds["bitrate_kbps"] = ("preset", [float(presets[n]["bitrate_kbps"]) for n in names])
    ds["compute_minutes_per_session_hour"] = ("preset", [compute_minutes(fps, 3600.0, presets[n]["ms_per_frame"],
                                                                         utilization) for n in names])
    ds["egress_gb_per_session_hour"] = ("preset", [egress_gb(presets[n]["bitrate_kbps"] / 1000, 3600.0, viewers)
                                                   for n in names])
    for k in TERMS:
        ds[k].attrs["units"] = "USD per session-hour"
    ds["fleet_usd_per_hour"].attrs["units"] = "USD per hour"
    ds["compute_minutes_per_session_hour"].attrs["units"] = "GPU-minutes (fluid: no whole-GPU rounding)"
    ds["egress_gb_per_session_hour"].attrs["units"] = "GB (seed's /8/1024 from Mbit)"
    ds.attrs.update({"fps": float(fps), "utilization": float(utilization), "viewers": int(viewers),
                     "gpu_usd_per_hour": prices.gpu_usd_per_hour, "egress_usd_per_gb": prices.egress_usd_per_gb,
                     "relay_premium_usd_per_gb": prices.relay_premium_usd_per_gb,
                     "idle_headroom": overheads.idle_headroom,
                     "cold_starts_per_gpu_hour": overheads.cold_starts_per_gpu_hour,
                     "cold_start_s": overheads.cold_start_s, "relay_pct": overheads.relay_pct})
    return ds


def cost_plots(ds: xr.Dataset):
    """Cost per session-hour against concurrency, one curve per quality preset, and its breakdown by term."""
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401  (registers the backend; notebooks load the extension)
    curves = functools.reduce(operator.mul, [
        hv.Curve((ds["concurrency"].values, ds["total_usd"].sel(preset=p).values), "concurrency",
                 hv.Dimension("usd", label="USD per session-hour"), label=str(p)).opts(tools=["hover"])
        * hv.Scatter((ds["concurrency"].values, ds["total_usd"].sel(preset=p).values), "concurrency", "usd")
        for p in ds["preset"].values
    ]).opts(width=640, height=320, logx=True, legend_position="top_right",
            title="cost per session-hour vs concurrency (by quality preset)")
    rows = [(f"{p} @ {int(n)}", term.replace("_usd", ""), float(ds[term].sel(preset=p, concurrency=n)))
            for p in ds["preset"].values for n in ds["concurrency"].values for term in TERMS[:-1]]
    bars = hv.Bars(rows, kdims=["preset @ concurrency", "term"], vdims=hv.Dimension("usd", label="USD per session-hour")
                   ).opts(stacked=True, width=640, height=340, xrotation=60, legend_position="right",
                          title="where the money goes", tools=["hover"])
    return (curves + bars).cols(1)
