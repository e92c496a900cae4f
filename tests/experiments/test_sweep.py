"""`worldlab sweep`: grid rules, a real 4-point sweep of notebook 02 on a 2-worker LocalCluster (run twice:
identical fidelity), failed points recorded beside finished ones, the cache, and bad input."""

import json
import pathlib
import subprocess
import sys

import nbformat
import numpy as np
import pytest

from worldlab.experiments.grid import GridError, load_grid, parse_grid
from worldlab.experiments.provenance import PROVENANCE_KEYS
from worldlab.experiments.results import load_dataset
from worldlab.experiments.sweep import run_sweep

GRID = {"weights": ["fp32", "w4a4"], "kv": ["none", "nvfp4"], "window": "short", "seeds": [1], "steps": 6}


def write_yaml(path: pathlib.Path, data) -> pathlib.Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))  # file order = dimension order
    return path


def test_grid_rules_vary_lists_fix_scalars_and_list_typed_parameters():
    g = parse_grid(GRID)
    assert g.notebook.name == "02_three_toggles.ipynb"
    assert g.varied == {"weights": ["fp32", "w4a4"], "kv": ["none", "nvfp4"]}
    assert g.fixed == {"window": "short", "seeds": [1], "steps": 6}
    assert len(g.points()) == 4 and {"weights": "w4a4", "kv": "none"}.items() <= g.points()[2].items()
    g = parse_grid({"seeds": [[1, 2], [3]], "steps": 4})  # seeds is list-typed: a list of lists varies it
    assert g.varied == {"seeds": [[1, 2], [3]]} and [p["seeds"] for p in g.points()] == [[1, 2], [3]]
    assert parse_grid({"seeds": 5}).fixed["seeds"] == [5]


@pytest.mark.parametrize("grid, message", [
    ({"bogus": [1, 2]}, "unknown parameter(s) ['bogus']"),
    ({"out": "x.nc"}, "set by the sweep"),
    ({"weights": ["fp32", "fp16"]}, "'fp16' for weights"),
    ({"notebook": "no_such_notebook"}, "not found"),
    ({"steps": []}, "empty list"),
    ({"steps": {"a": 1}}, "type dict"),
    ([1, 2], "YAML mapping"),
])
def test_bad_grids_are_refused_with_one_line(grid, message):
    with pytest.raises(GridError) as exc:
        parse_grid(grid)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, tmp_path / "plain.ipynb")
    with pytest.raises(GridError, match="no cell tagged 'parameters'"):
        parse_grid({"notebook": str(tmp_path / "plain.ipynb")})
    (tmp_path / "bad.yaml").write_text("weights: [fp32\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(tmp_path / "bad.yaml")


def fidelity(ds):
    return {k: ds[k].values for k in ("psnr", "mse", "ssim", "agent_err_px", "psnr_mean", "kv_bytes")}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_four_point_sweep_on_two_workers_is_reproducible(tmp_path):
    grid = write_yaml(tmp_path / "grid.yaml", GRID)
    first = run_sweep(grid, tmp_path / "a.nc", workers=2, progress=False)
    assert dict(first.sizes) == {"weights": 2, "kv": 2, "seed": 1, "step": 6}
    assert (first.status.values == "ok").all(), first.error.values
    ds = load_dataset(tmp_path / "a.nc")
    assert set(PROVENANCE_KEYS) <= set(ds.attrs) and json.loads(ds.attrs["grid"])["weights"] == ["fp32", "w4a4"]
    assert ds.psnr.dims == ("weights", "kv", "seed", "step")
    assert ((ds.psnr > 10) & (ds.psnr <= 100)).all()
    kv = ds.kv_bytes.sel(weights="fp32")
    assert kv.sel(kv="nvfp4") < kv.sel(kv="none") / 6  # NVFP4 KV cache vs fp32
    assert (ds.frame_bytes > 0).all() and (ds.encode_ms > 0).all()  # every frame went through the encoder
    runs = json.loads(ds.attrs["runs"])
    assert all(pathlib.Path(r["notebook"]).is_file() for r in runs)  # executed notebooks kept beside
    second = run_sweep(grid, tmp_path / "b.nc", workers=2, progress=False, cache=False)
    assert all(r["status"] == "ok" for r in json.loads(second.attrs["runs"]))
    for name, values in fidelity(first).items():
        assert np.array_equal(values, second[name].values), name  # bit-identical across re-runs


FLAKY_NOTEBOOK = '''
import xarray as xr
from worldlab.experiments.provenance import provenance
from worldlab.experiments.results import save_dataset
if x == 2:
    raise RuntimeError("point two is broken")
save_dataset(xr.Dataset({"y": ("i", [x, x * x])}, attrs=provenance()), out)
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failed_point_is_recorded_the_others_complete_and_reruns_use_the_cache(tmp_path, monkeypatch):
    params = nbformat.v4.new_code_cell('x = 0\nout = "r.nc"')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(FLAKY_NOTEBOOK)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "flaky.ipynb")
    grid = write_yaml(tmp_path / "grid.yaml", {"notebook": str(tmp_path / "flaky.ipynb"), "x": [1, 2, 3]})
    monkeypatch.chdir(tmp_path)  # relative paths, as typed on a command line
    ds = run_sweep("grid.yaml", "r.nc", workers=2, progress=False)
    assert list(ds.status.values) == ["ok", "failed", "ok"]
    assert ds.error.values[1] == "RuntimeError: point two is broken"
    assert ds.y.sel(x=3).values.tolist() == [3, 9] and np.isnan(ds.y.sel(x=2).values).all()
    again = run_sweep(grid, "r.nc", workers=2, progress=False)
    assert list(again.status.values) == ["cached", "failed", "cached"]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "worldlab.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--grid", "missing.yaml", "--out", "r.nc"], "no grid file"),
    (["--grid", "grid.yaml", "--out", "nodir/r.nc"], "does not exist"),
    (["--grid", "grid.yaml", "--out", "r.txt"], "must end in .nc"),
    (["--grid", "grid.yaml", "--out", "r.nc", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
    (["--grid", "grid.yaml", "--out", "r.nc", "--workers", "0"], "--workers must be >= 1"),
])
def test_sweep_cli_bad_input_is_one_line_and_leaves_no_results_file(tmp_path, args, message):
    write_yaml(tmp_path / "grid.yaml", GRID)
    r = cli("sweep", *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.nc"))


def test_the_cache_key_follows_the_checkpoint_each_points_model_loads(tmp_path):
    """A grid over `model_name` keys each point by its own model's file, so retraining conv invalidates conv's
    points (and only those); the oracle loads no file."""
    from worldlab.experiments.sweep import point_checkpoint, point_key
    from worldlab.model import SHIPPED_TINY
    from worldlab.model.conv import SHIPPED as CONV

    assert point_checkpoint({"model_name": "conv"}) == CONV
    assert point_checkpoint({}) == SHIPPED_TINY and point_checkpoint({"model_name": "oracle"}) is False
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(CONV.read_bytes())
    nb = tmp_path / "02_three_toggles.ipynb"
    key = point_key(nb, {"model_name": "conv", "checkpoint": str(mine)}, "c0")
    mine.write_bytes(CONV.read_bytes() + b" ")  # same path, different file: a different key
    assert point_key(nb, {"model_name": "conv", "checkpoint": str(mine)}, "c0") != key
