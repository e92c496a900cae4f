"""`worldlab sweep`: execute a notebook once per grid point with papermill on Dask, cache finished points,
and merge the per-run results into one xarray.Dataset whose dimensions are the varied parameters.

Executed notebooks and per-point netCDF files are kept in `<results stem>_runs/` beside the results file.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import sys
import time

import numpy as np
import xarray as xr

from worldlab.experiments.grid import Grid, load_grid
from worldlab.experiments.provenance import code_version, checkpoint_sha256, now, provenance
from worldlab.experiments.results import ResultsError, check_out_path, load_dataset, save_dataset, stack

CONNECT_TIMEOUT_S = 10


class SweepError(ValueError):
    """The sweep cannot start (bad scheduler, bad output); one line."""


def point_checkpoint(point: dict):
    """The checkpoint file a point's model loads (`model_name`, what --model takes; default tiny), False for
    a model without one; an unknown model gives None here and its one-line error when the point runs."""
    from worldlab.model.registry import resolve

    try:
        return resolve(str(point.get("model_name", "tiny"))).checkpoint_file(point.get("checkpoint")) or False
    except ValueError:
        return None


def point_key(notebook: pathlib.Path, point: dict, code: str) -> str:
    """Cache key: notebook name + parameters + code version + the hash of the checkpoint the model loads."""
    blob = json.dumps({"notebook": notebook.stem, "params": point, "code": code,
                       "checkpoint": checkpoint_sha256(point_checkpoint(point))}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _slug(grid: Grid, point: dict) -> str:
    text = "_".join(f"{k}-{point[k]}" for k in grid.varied) or "run"
    return re.sub(r"[^A-Za-z0-9._-]+", "", text.replace(" ", ""))[:80]


def one_line(exc: BaseException) -> str:
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = getattr(exc, "evalue", None) or str(exc)
    return f"{ename}: {evalue}".splitlines()[0][:300]


def run_point(notebook: str, params: dict, nc_path: str, ipynb_path: str, timeout_s: float) -> dict:
    """Runs inside a Dask worker: one papermill execution. Never raises; returns status and timing."""
    import papermill as pm

    nc = pathlib.Path(nc_path)
    t0 = time.time()
    try:
        pm.execute_notebook(notebook, ipynb_path, parameters={**params, "out": str(nc)}, kernel_name="python3",
                            progress_bar=False, cwd=str(nc.parent), execution_timeout=timeout_s)
        load_dataset(nc)  # the notebook must have written a readable results file
        return {"status": "ok", "error": "", "elapsed_s": time.time() - t0}
    except Exception as exc:  # a failed point is recorded, the sweep goes on
        nc.unlink(missing_ok=True)  # a stale file must not be taken for a finished point
        return {"status": "failed", "error": one_line(exc), "elapsed_s": time.time() - t0}


def _client(workers: int, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler} ({one_line(exc)})") from None
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    return Client(cluster), cluster


def _execute(grid: Grid, todo: list[tuple], workers: int, scheduler: str | None, timeout_s: float,
             progress: bool) -> dict:
    """Submit every (index, point, nc, ipynb) to Dask; index -> run_point result."""
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    if not todo:
        return {}
    client, cluster = _client(workers, scheduler)
    try:
        futures = {client.submit(run_point, str(grid.notebook), point, str(nc), str(nb), timeout_s,
                                 key=f"worldlab-sweep-{nc.stem}", pure=False): i for i, point, nc, nb in todo}
        done = {}
        bar = tqdm(total=len(futures), desc="sweep", unit="run", disable=not progress, file=sys.stderr)
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                done[i] = fut.result()
            except Exception as exc:  # the worker itself died
                done[i] = {"status": "failed", "error": one_line(exc), "elapsed_s": float("nan")}
            bar.set_postfix_str(f"{sum(r['status'] == 'failed' for r in done.values())} failed")
            bar.update(1)
        bar.close()
        return done
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _coord(value):
    """A grid value as a coordinate label (lists, e.g. varied seeds, become their JSON text)."""
    return json.dumps(value) if isinstance(value, list) else value


def merge(grid: Grid, records: list[dict]) -> xr.Dataset:
    """Per-point datasets -> one Dataset with a dimension per varied parameter; status/error over the grid."""
    parts = [load_dataset(r["nc"]).assign_coords({k: _coord(r["point"][k]) for k in grid.varied})
             for r in records if r["status"] in ("ok", "cached")]
    merged = stack(parts, grid.varied)
    shape = [len(v) for v in grid.varied.values()]
    coords = {k: [_coord(v) for v in vals] for k, vals in grid.varied.items()}
    status = np.array([r["status"] for r in records], dtype=object).reshape(shape)
    error = np.array([r["error"] for r in records], dtype=object).reshape(shape)
    dims = list(grid.varied)
    outcome = xr.Dataset({"status": (dims, status.astype(str)), "error": (dims, error.astype(str))}, coords=coords)
    # outer join: a value whose every point failed still gets its place on the grid (data NaN there)
    return xr.merge([merged, outcome], join="outer", combine_attrs="drop").transpose(*dims, ...)


def run_sweep(grid_path, out, *, workers: int = 2, scheduler: str | None = None, cache: bool = True,
              progress: bool = True, timeout_s: float = 3600.0) -> xr.Dataset:
    out = check_out_path(out).resolve()  # each notebook runs with its own cwd: hand it absolute paths
    grid = load_grid(grid_path)
    started, code = now(), code_version()
    stamp = provenance(point_checkpoint(grid.fixed), started_at=started)  # the tree as the sweep starts
    run_dir = out.with_name(f"{out.stem}_runs")
    run_dir.mkdir(exist_ok=True)
    records, todo = [], []
    for i, point in enumerate(grid.points()):
        key = point_key(grid.notebook, point, code)
        stem = f"{_slug(grid, point)}-{key}"
        nc, nb = run_dir / f"{stem}.nc", run_dir / f"{stem}.ipynb"
        rec = {"point": point, "key": key, "nc": str(nc), "notebook": str(nb), "status": "", "error": "",
               "elapsed_s": 0.0}
        if cache and nc.is_file() and _readable(nc):
            rec["status"] = "cached"
        else:
            nc.unlink(missing_ok=True)
            todo.append((i, point, nc, nb))
        records.append(rec)
    for i, res in _execute(grid, todo, workers, scheduler, timeout_s, progress).items():
        records[i].update(res)
    ds = merge(grid, records)
    ds.attrs.update(stamp)
    ds.attrs.update({"grid": json.dumps(grid.source), "notebook": grid.notebook.stem, "code_version": code,
                     "workers": "scheduler " + scheduler if scheduler else f"LocalCluster x {workers}",
                     "finished_at": now(),
                     "runs": json.dumps([{k: r[k] for k in ("point", "status", "error", "elapsed_s", "notebook")}
                                         for r in records], default=str)})
    save_dataset(ds, out)
    return ds


def _readable(nc: pathlib.Path) -> bool:
    try:
        load_dataset(nc)
        return True
    except ResultsError:
        return False
