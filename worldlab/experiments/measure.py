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


UNITS = {"psnr": "dB", "mse": "", "ssim": "", "agent_err_px": "px", "model_ms": "ms", "encode_ms": "ms",
         "frame_bytes": "bytes", "kv_bytes": "bytes", "rss_bytes": "bytes", "bitrate_kbps": "kbit/s"}


def _describe_vars(ds: xr.Dataset) -> None:
    if "psnr" in ds:
        ds["psnr"].attrs["long_name"] = f"per-frame PSNR vs the environment (exact frames = {PSNR_CAP})"
    for name, unit in UNITS.items():
        if name in ds and unit:
            ds[name].attrs["units"] = unit
