"""Results files: xarray Datasets as netCDF (h5netcdf engine), written atomically, read back with checks.

A results file carries `worldlab_results = RESULTS_FORMAT` and the provenance attrs; anything else is
refused with a one-line error, and a half-written file never has the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile

import numpy as np

from worldlab.experiments.provenance import PROVENANCE_KEYS

RESULTS_FORMAT = 1
ENGINE = "h5netcdf"


class ResultsError(ValueError):
    """A results file or output path that cannot be used; the message is one line."""


def check_out_path(path, suffixes=(".nc",)) -> pathlib.Path:
    """Refuse an output path whose directory is missing or whose suffix is wrong, before any work."""
    p = pathlib.Path(path)
    if p.suffix not in suffixes:
        raise ResultsError(f"output {p} must end in {' or '.join(suffixes)}")
    if not p.parent.is_dir():
        raise ResultsError(f"output directory {p.parent} does not exist")
    if p.is_dir():
        raise ResultsError(f"output {p} is a directory")
    return p


def _clean_attrs(attrs: dict) -> dict:
    """netCDF attrs hold str/number/1-D arrays; bools become ints, dicts/lists of mixed types JSON."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, bool | np.bool_):
            v = int(v)
        elif isinstance(v, dict) or (isinstance(v, list | tuple) and not all(isinstance(x, int | float) for x in v)):
            v = json.dumps(v, default=str)
        elif v is None:
            v = "none"
        out[k] = v
    return out


@contextlib.contextmanager
def atomic_path(path: pathlib.Path):
    """A temporary name beside `path` to write to; renamed to `path` when the block succeeds, removed when
    it fails, so a half-written file never carries the final name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are shared like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_dataset(ds, path) -> pathlib.Path:
    """Write `ds` to `path` atomically (temporary name in the same directory, then rename)."""
    p = check_out_path(path)
    missing = [k for k in PROVENANCE_KEYS if k not in ds.attrs]
    if missing:
        raise ResultsError(f"dataset lacks provenance attrs {missing}")
    ds = ds.drop_encoding()  # an encoding read from another file (e.g. a fixed string width) must not truncate
    ds.attrs = _clean_attrs({**ds.attrs, "worldlab_results": RESULTS_FORMAT})
    for name in ds.variables:
        ds[name].attrs = _clean_attrs(ds[name].attrs)
    with atomic_path(p) as tmp:
        ds.to_netcdf(tmp, engine=ENGINE, invalid_netcdf=True)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_dataset(path):
    """Read a results file fully into memory; one-line ResultsError when it is missing, corrupt or foreign."""
    import xarray as xr

    p = pathlib.Path(path)
    if not p.is_file():
        raise ResultsError(f"no results file at {p}")
    try:
        with xr.open_dataset(p, engine=ENGINE) as ds:
            ds = ds.load()
    except Exception as exc:  # h5py/h5netcdf raise many types for a damaged file
        raise ResultsError(f"{p} is not a readable netCDF file ({type(exc).__name__})") from None
    if ds.attrs.get("worldlab_results") != RESULTS_FORMAT:
        raise ResultsError(f"{p} is not a worldlab results file (no worldlab_results attr)")
    return ds


def json_attr(ds, name: str, default=None):
    """An attr written as JSON by save_dataset (dicts, lists of strings), decoded."""
    v = ds.attrs.get(name)
    if v is None:
        return default
    try:
        return json.loads(v) if isinstance(v, str) else v
    except json.JSONDecodeError:
        return v


def stack(datasets, dims):
    """Runs that each hold one value of every name in `dims` (as a scalar coordinate) -> one Dataset with
    those names as leading dimensions; combinations nobody ran are NaN. Attrs are dropped (the caller
    stamps its own provenance)."""
    import xarray as xr

    dims = list(dims)
    parts = []
    for ds in datasets:
        missing = [d for d in dims if d not in ds.coords]
        if missing:
            raise ResultsError(f"a run has no coordinate {missing[0]!r} to stack on")
        parts.append(ds.drop_attrs().expand_dims(dims))
    if not parts:
        return xr.Dataset()
    merged = xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop")
    order = {d: list(dict.fromkeys(v for ds in datasets for v in np.atleast_1d(ds[d].values).tolist())) for d in dims}
    return merged.reindex(order).transpose(*dims, ...)  # merge sorts labels; keep them in run order
