"""HoloViews (bokeh) figures and tables of toggle results, shared by the notebooks and `worldlab report`.

Each builder takes one run of notebook 02 or a sweep over any grid dims; a configuration is a grid point.
"""

from __future__ import annotations

import itertools

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh backend the options below name)
import numpy as np
import pandas as pd

from worldlab.evaluate import PSNR_CAP, capped_psnr

RUN_DIMS = ("seed", "step")  # a run's own dims; every other dim of a result is a grid dim
TOGGLE_NAMES = ("weights", "window", "kv")
# (group, variable, column): the toggle table, fidelity x speed x memory x end-to-end cost.
TABLE_COLUMNS = (
    ("Fidelity", "psnr_step1", "PSNR step 1 (dB)"),
    ("Fidelity", "psnr_mean", "PSNR mean (dB)"),
    ("Fidelity", "psnr_tail", "PSNR tail (dB)"),
    ("Fidelity", "ssim_mean", "SSIM"),
    ("Fidelity", "agent_err_px_mean", "agent err (px)"),
    ("Fidelity", "switch_psnr", "switch PSNR (dB)"),
    ("Fidelity", "occlusion_psnr", "occlusion PSNR (dB)"),
    ("Fidelity", "collapse_seeds", "collapsed seeds"),
    ("Speed", "model_ms_p50", "model ms p50"),
    ("Speed", "model_ms_p95", "model ms p95"),
    ("End to end", "encode_ms_p50", "encode ms p50"),
    ("End to end", "bytes_per_frame", "bytes/frame"),
    ("End to end", "bitrate_kbps", "bitrate (kbit/s)"),
    ("Memory", "kv_bytes", "KV cache (bytes)"),
    ("Memory", "rss_bytes", "RSS (MiB)"),
)
SCALE = {"rss_bytes": 1 / 2**20}
WIDE, TALL = 1000, 400
MARKER_MIN, MARKER_MAX = 10, 40  # px
LABEL_LIMIT = 8  # configurations labelled in place on the scatter


def grid_dims(ds) -> list[str]:
    """The dims a sweep added (weights, kv, ...), in dataset order; empty for a single run."""
    ref = ds["psnr"].dims if "psnr" in ds else tuple(ds.dims)
    return [d for d in ref if d not in RUN_DIMS]


def _value(ds, name):
    """A 0-d coord/variable or an attr as a plain Python value; None when absent."""
    if name in ds.variables and ds[name].ndim == 0:
        return ds[name].values.item()
    return ds.attrs.get(name)


def configurations(ds) -> list[tuple[dict, str]]:
    """(isel indexer, label) for every grid point; a single run is one configuration."""
    dims = grid_dims(ds)
    out = []
    for idx in itertools.product(*(range(ds.sizes[d]) for d in dims)):
        point = dict(zip(dims, idx))
        out.append((point, config_label(ds.isel(point), dims)))
    return out


def config_label(point_ds, dims=()) -> str:
    """"fp32 / short / kv none" (Toggles.label) plus "name=value" for other grid dims."""
    toggles = {n: _value(point_ds, n) for n in TOGGLE_NAMES}
    parts = []
    if all(v is not None for v in toggles.values()):
        parts.append(f"{toggles['weights']} / {toggles['window']} / kv {toggles['kv']}")
    parts += [f"{d}={_value(point_ds, d)}" for d in dims if d not in TOGGLE_NAMES]
    return ", ".join(parts) or "run"


def _number(point_ds, name):
    v = _value(point_ds, name)
    return np.nan if v is None else float(v) * SCALE.get(name, 1)


def toggle_table(ds) -> pd.DataFrame:
    """One row per configuration: its toggles and grid values, status (sweeps), then the metric columns."""
    dims = grid_dims(ds)
    rows = []
    for point, label in configurations(ds):
        sub = ds.isel(point)
        row = {"configuration": label}
        row.update({n: _value(sub, n) for n in (*TOGGLE_NAMES, *dims) if _value(sub, n) is not None})
        if "status" in ds:
            row["status"] = str(_value(sub, "status"))
        row.update({col: _number(sub, var) for _, var, col in TABLE_COLUMNS if var in ds})
        rows.append(row)
    return pd.DataFrame(rows).set_index("configuration")


def column_groups(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(group, column) for each column of a toggle_table, for a two-level header."""
    group = {col: g for g, _, col in TABLE_COLUMNS}
    return [(group.get(c, "Configuration"), c) for c in df.columns]


def pooled_psnr_per_step(point_ds):
    """PSNR of the seed-mean MSE at each step, capped at PSNR_CAP (a per-seed mean of capped PSNRs would
    let one exact seed hide another's error); the per-frame PSNR's seed mean if there is no MSE."""
    if "mse" not in point_ds:
        return point_ds["psnr"].mean("seed")
    return capped_psnr(point_ds["mse"].mean("seed", skipna=True))


def psnr_vs_step(ds) -> hv.Overlay:
    """One curve per configuration of the pooled PSNR at each step."""
    step = hv.Dimension("step", label="rollout step")
    psnr = hv.Dimension("psnr", label="PSNR, pooled over seeds (dB)")
    curves = []
    for point, label in configurations(ds):
        db = pooled_psnr_per_step(ds.isel(point))
        if np.isfinite(db.values).any():
            curve = hv.Curve((db["step"].values, db.values), step, psnr, label=label)
            curves.append(curve.opts(line_width=2, tools=["hover"], backend="bokeh"))
    overlay = hv.Overlay(curves or [hv.Curve([], step, psnr)])
    return overlay.opts(width=WIDE, height=TALL, legend_position="right", show_grid=True,
                        title=f"PSNR vs step (exact frames = {PSNR_CAP:g} dB)", backend="bokeh")


def _ok_points(ds) -> pd.DataFrame:
    """Configurations with a measured PSNR and speed, in short column names for the plots."""
    rows = []
    for point, label in configurations(ds):
        sub = ds.isel(point)
        row = {"config": label, **{v: _number(sub, v) for v in
                                   ("psnr_mean", "model_ms_p50", "model_ms_p95", "kv_bytes") if v in ds}}
        rows.append(row)
    df = pd.DataFrame(rows)
    need = [c for c in ("psnr_mean", "model_ms_p50") if c in df]
    return df.dropna(subset=need) if len(need) == 2 else df.iloc[0:0]


def fidelity_speed_memory(ds) -> hv.Overlay:
    """PSNR mean against model ms p50 (a bar to p95 shows the spread); marker area grows with kv_bytes."""
    df = _ok_points(ds)
    if "kv_bytes" not in df:
        df["kv_bytes"] = 0.0
    if "model_ms_p95" not in df:
        df["model_ms_p95"] = df.get("model_ms_p50", np.nan)
    biggest = float(df["kv_bytes"].max()) if len(df) and df["kv_bytes"].max() > 0 else 1.0
    df["size"] = MARKER_MIN + (MARKER_MAX - MARKER_MIN) * np.sqrt(df["kv_bytes"].fillna(0) / biggest)
    x = hv.Dimension("model_ms_p50", label="model ms per step (p50; bar to p95)")
    y = hv.Dimension("psnr_mean", label="PSNR mean (dB)")
    kv = hv.Dimension("kv_bytes", label="KV cache (bytes)")
    crowded = len(df) > LABEL_LIMIT  # past this, text labels overlap: a legend names the points instead
    points = hv.Points(df, [x, y], ["config", kv, "model_ms_p95", "size"]).opts(
        color="config", cmap="Category20" if crowded else "Category10", size="size", alpha=0.75, line_color="black", tools=["hover"],
        backend="bokeh")
    spread = hv.Segments(df, ["model_ms_p50", "psnr_mean", "model_ms_p95", "psnr_mean"]).opts(
        color="gray", line_width=2, backend="bokeh")
    labels = hv.Labels(df, [x, y], "config").opts(
        text_font_size="9pt", text_color="black", text_baseline="bottom", hooks=[_float_above_marker],
        backend="bokeh")
    overlay = spread * points if crowded else spread * points * labels
    return overlay.opts(
        width=WIDE, height=TALL, show_grid=True, show_legend=crowded, legend_position="right", padding=0.25,
        xlabel=x.label,
        ylabel=y.label, title="Fidelity vs speed vs memory (marker area ∝ KV cache bytes)", backend="bokeh")


def _float_above_marker(plot, element) -> None:
    # Labels' offsets are in data units; the marker is in screen pixels, so lift the text in pixels.
    plot.handles["glyph"].y_offset = -(MARKER_MAX / 2 + 3)


def memory_bars(ds) -> hv.Bars:
    """KV cache bytes per configuration (the memory axis of the toggles, on its own scale)."""
    df = _ok_points(ds) if "kv_bytes" in ds else pd.DataFrame({"config": [], "kv_bytes": []})
    bars = hv.Bars(df, hv.Dimension("config", label="configuration"),
                   hv.Dimension("kv_bytes", label="KV cache (bytes)"))
    return bars.opts(invert_axes=True, width=WIDE, height=max(180, 80 + 36 * len(df)), color="#4c72b0",
                     tools=["hover"], show_grid=True, title="KV cache per configuration", backend="bokeh")


def stage_table(ds) -> pd.DataFrame:
    """Percentile scalars named `<stage>_p50/_p95/_p99` as one row per stage (a generic latency view)."""
    rows: dict[str, dict] = {}
    for name in ds.data_vars:
        stage, _, pct = str(name).rpartition("_")
        if stage and pct in ("p50", "p95", "p99") and ds[name].ndim == 0:
            rows.setdefault(stage, {})[pct] = float(ds[name])
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=["p50", "p95", "p99"]).rename_axis("stage")
