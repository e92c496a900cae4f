"""One toggle configuration measured end to end into an xarray.Dataset: fidelity against the environment,
model speed, memory, and the cost of the frames through the real encoder (encode_ms, bytes per frame).

Notebook 02, the quickstart, `worldlab eval --out` and the sweep all measure through `measure_toggles`.
"""

from __future__ import annotations

import time

import numpy as np
import psutil
import xarray as xr

from worldlab.config import SessionConfig, Toggles
from worldlab.engine.metrics import percentile
from worldlab.evaluate import PSNR_CAP, capped_psnr, evaluate_runs
from worldlab.experiments.provenance import now, provenance
from worldlab.transport.encoder import RoomEncoder
from worldlab.transport.quality import LADDER, upscale
from worldlab.model.protocol import describe

# Scalar figures copied from evaluate() (names as `worldlab eval --json` prints them).
EVAL_SCALARS = ("psnr_step1", "psnr_mean", "psnr_mean_all", "psnr_tail", "ssim_mean", "switch_psnr",
                "switch_psnr_min", "occlusion_psnr", "occlusion_psnr_all", "switch_ms", "model_ms_p50",
                "model_ms_p95", "kv_bytes")
ENCODE_RUNG = SessionConfig.quality_start  # the rung a live session starts on


def encode_cost(frames: np.ndarray, rung: str = ENCODE_RUNG, cfg: SessionConfig = SessionConfig()):
    """Each frame upscaled as the live track does and encoded by the room encoder: (ms, bytes) per frame."""
    rung = LADDER[rung]
    enc = RoomEncoder(cfg.codec, fps=cfg.fps_target, keyframe_interval_s=cfg.keyframe_interval_s)
    ms, sizes = [], []
    for i, frame in enumerate(frames):
        big = upscale(frame, rung.height)
        t0 = time.perf_counter()
        packet = enc.encode(big, i * 3000, rung.bitrate)
        ms.append((time.perf_counter() - t0) * 1000)
        sizes.append(0 if packet is None else packet.size)
    return np.array(ms), np.array(sizes)


def measure_toggles(toggles: Toggles, seeds, steps: int, *, checkpoint=None, model=None, encode: bool = True,
                    fps_target: float = SessionConfig.fps_target, model_name: str = "tiny",
                    device: str = "cpu") -> xr.Dataset:
    """Build `model_name` (what --model takes) under `toggles` on `device`, or take `model`, roll out every
    seed, and return the Dataset."""
    from worldlab.model.registry import resolve

    started = now()
    if model is None:
        model = resolve(model_name).build(toggles, device, checkpoint)
    res, runs = evaluate_runs(model, seeds, steps)
    return eval_dataset(res, runs, toggles, model, checkpoint=checkpoint, encode=encode, fps_target=fps_target,
                        started_at=started)


def eval_dataset(res: dict, runs: list[dict], toggles: Toggles, model, *, checkpoint=None, encode: bool = True,
                 fps_target: float = SessionConfig.fps_target, started_at: str | None = None) -> xr.Dataset:
    """evaluate_runs() output -> the Dataset (per-step arrays, scalar figures, toggles, provenance)."""
    t0 = time.perf_counter()
    seeds, steps = res["seeds"], res["steps"]
    per = {k: np.array([r[src] for r in runs], dtype=np.float64)
           for k, src in (("mse", "mse"), ("ssim", "ssim"), ("agent_err_px", "agent_err"), ("model_ms", "ms"))}
    data = {k: (("seed", "step"), v) for k, v in per.items()}
    data["psnr"] = (("seed", "step"), capped_psnr(per["mse"]))
    if encode:
        cost = [encode_cost(r["frames"]) for r in runs]
        data["encode_ms"] = (("seed", "step"), np.array([c[0] for c in cost]))
        data["frame_bytes"] = (("seed", "step"), np.array([c[1] for c in cost], dtype=np.int64))
    ds = xr.Dataset(data, coords={"seed": seeds, "step": np.arange(1, steps + 1)})
    for k in EVAL_SCALARS:
        ds[k] = res[k]
    ds["agent_err_px_mean"] = float(per["agent_err_px"].mean())
    ds["collapse_seeds"] = len(res["collapse_seeds"])
    ds["rss_bytes"] = int(psutil.Process().memory_info().rss)
    ds["fps_target"] = float(fps_target)
    if encode:
        ds["encode_ms_p50"] = percentile(ds["encode_ms"], 50)
        ds["bytes_per_frame"] = float(ds["frame_bytes"].mean())
        ds["bitrate_kbps"] = float(ds["frame_bytes"].mean()) * fps_target * 8 / 1000
    described = describe(model)
    ds = ds.assign_coords(toggles.to_dict())
    ds.attrs.update(provenance(checkpoint, started_at=started_at, model=model))
    ds.attrs.update({"steps": int(steps), "seeds": list(seeds), "model": str(described["model"]),
                     "encode_rung": ENCODE_RUNG if encode else "none",
                     "encode_s": round(time.perf_counter() - t0, 3)})
    _describe_vars(ds)
    return ds


def bench_dataset(res: dict, toggles: Toggles, checkpoint=None, started_at: str | None = None,
                  model=None) -> xr.Dataset:
    """`worldlab bench` figures -> a Dataset: model_ms per timed step (dim `sample`), throughput per batch."""
    batches = sorted(res["batch_fps"])
    ds = xr.Dataset({"model_ms": (("sample",), np.asarray(res["model_ms"], dtype=np.float64)),
                     "batch_fps": (("batch",), [res["batch_fps"][b] for b in batches]),
                     "batch_speedup": (("batch",), [res["batch_speedup_vs_sequential"][b] for b in batches])},
                    coords={"sample": np.arange(len(res["model_ms"])), "batch": batches})
    for k in ("model_ms_p50", "model_ms_p95", "model_ms_p99", "switch_ms", "switch_ms_max", "fps", "kv_bytes",
              "threads"):
        ds[k] = res[k]
    ds = ds.assign_coords(toggles.to_dict())
    ds.attrs.update(provenance(checkpoint, started_at=started_at, model=model))
    ds.attrs.update({"steps": int(res["steps"]), "model": str(describe(model)["model"]) if model is not None else "tiny"})
    _describe_vars(ds)
    return ds


# `worldlab eval --out` for a DOOM model (worldlab.doom_eval.evaluate's figures): each figure over `source` (the
# model and the baselines measured in the same run), intervals over `bound`, turns over `horizon`, window recall
# over `recall_k`, the prompt switch's histogram distance over `switch_frame`, every target's value, bar and
# verdict over `target`, and the true game's own figures as truth_*.
DOOM_FIGURES = ("tf_psnr", "tf_ssim", "tf_sharpness", "psnr_16", "ssim_16", "sharpness_16", "psnr_64", "ssim_64",
                "sharpness_64", "psnr_all", "sharpness_last", "persistence_psnr_16", "exact_share", "flat_frames",
                "collapse", "counterfactual_shift_px", "counterfactual_ratio", "switch_luma_psnr")


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _figure(fig) -> tuple[float, tuple[float, float]]:
    """A figure as doom_eval writes it ({value, ci}, {value, sharp} or a bare number) -> (value, (low, high))."""
    if isinstance(fig, dict):
        ci = fig.get("ci") or (None, None)
        return _num(fig.get("value")), (_num(ci[0]), _num(ci[1]))
    return _num(fig), (float("nan"), float("nan"))


def doom_eval_dataset(res: dict, toggles: Toggles, model, *, checkpoint=None, started_at: str | None = None) -> xr.Dataset:
    """worldlab.doom_eval.evaluate() output -> a Dataset (see DOOM_FIGURES above), with toggles and provenance."""
    runs = {"model": res, **res["baselines"]}
    sources = list(runs)
    horizons = sorted(res["turns"], key=int)
    ks = sorted(res["window_recall_psnr"] or {}, key=int)

    def part(fig, key):  # a figure a short run leaves out (None) reads as NaN
        return (fig or {}).get(key)

    data = {}
    for name in DOOM_FIGURES:
        figs = [_figure(runs[src].get(name)) for src in sources]
        data[name] = (("source",), [f[0] for f in figs])
        data[f"{name}_ci"] = (("source", "bound"), [f[1] for f in figs])
    turns = {src: runs[src]["turns"] or {} for src in sources}
    data["turn_agreement"] = (("source", "horizon"), [[_num(part(turns[s].get(h), "agreement")) for h in horizons]
                                                      for s in sources])
    ratio = [[_figure(part(turns[s].get(h), "ratio")) for h in horizons] for s in sources]
    data["turn_ratio"] = (("source", "horizon"), [[r[0] for r in row] for row in ratio])
    data["turn_ratio_ci"] = (("source", "horizon", "bound"), [[r[1] for r in row] for row in ratio])
    recall = [[_figure(part(runs[s]["window_recall_psnr"], k)) for k in ks] for s in sources]
    data["window_recall_psnr"] = (("source", "recall_k"), [[r[0] for r in row] for row in recall])
    data["window_recall_psnr_ci"] = (("source", "recall_k", "bound"), [[r[1] for r in row] for row in recall])
    n_switch = len(res["switch_hist_dist"] or ())
    data["switch_hist_dist"] = (("source", "switch_frame"), [[_num(v) for v in runs[s]["switch_hist_dist"] or
                                                               [None] * n_switch] for s in sources])
    truth = res["truth"]
    data["truth_turn_agreement"] = (("horizon",), [_num(part((truth["turns"] or {}).get(h), "agreement"))
                                                   for h in horizons])
    data["truth_window_return_psnr"] = (("recall_k",), [_num(part(truth["window_return_psnr"], k)) for k in ks])
    data["truth_counterfactual_shift_px"] = _num(truth["counterfactual_shift_px"])
    targets = list(res["targets"])
    data["target_value"] = (("target",), [_num(res["targets"][t]["value"]) for t in targets])
    data["target_bar"] = (("target",), [_num(res["targets"][t]["bar"]) for t in targets])
    data["target_op"] = (("target",), [res["targets"][t]["op"] for t in targets])
    data["target_met"] = (("target",), [bool(res["targets"][t]["met"]) for t in targets])
    ds = xr.Dataset(data, coords={"source": sources, "bound": ["low", "high"], "horizon": [int(h) for h in horizons],
                                  "recall_k": [int(k) for k in ks], "switch_frame": np.arange(1, n_switch + 1),
                                  "target": targets})
    for k in ("kv_bytes", "model_ms_p50", "model_ms_p95"):
        ds[k] = _num(res[k])
    ds = ds.assign_coords(toggles.to_dict())
    ds.attrs.update(provenance(checkpoint, started_at=started_at, model=model))
    ds.attrs.update({"steps": int(res["steps"]), "seeds": list(res["seeds"]), "model": str(describe(model)["model"]),
                     "world": "doom", "map": str(res["map"]), "prompt": str(res["prompt"]),
                     "switch_to": str(res["switch_to"])})
    _describe_vars(ds)
    return ds


UNITS = {"psnr": "dB", "mse": "", "ssim": "", "agent_err_px": "px", "model_ms": "ms", "encode_ms": "ms",
         "frame_bytes": "bytes", "kv_bytes": "bytes", "rss_bytes": "bytes", "bitrate_kbps": "kbit/s"}


def _describe_vars(ds: xr.Dataset) -> None:
    if "psnr" in ds:
        ds["psnr"].attrs["long_name"] = f"per-frame PSNR vs the environment (exact frames = {PSNR_CAP})"
    for name, unit in UNITS.items():
        if name in ds and unit:
            ds[name].attrs["units"] = unit
