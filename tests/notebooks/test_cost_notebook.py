"""Notebook 05 under papermill on a temporary copy: the cost model fed by measured numbers (a results file,
or a quick measurement of its own), values read back from the netCDF file it writes."""

import pathlib
import shutil

import numpy as np
import pytest
import xarray as xr

from worldlab.experiments.provenance import PROVENANCE_KEYS, provenance
from worldlab.experiments.results import load_dataset, save_dataset

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "05_cost_model.ipynb"
PRICES = {"gpu_usd_per_hour": 3.5, "egress_usd_per_gb": 0.25, "relay_premium_usd_per_gb": 0.5}  # test numbers


def run(tmp_path, **parameters):
    import papermill as pm

    src = tmp_path / "05.ipynb"
    shutil.copy(NOTEBOOK, src)
    out = tmp_path / "cost.nc"
    pm.execute_notebook(str(src), str(tmp_path / "05.out.ipynb"), kernel_name="python3", cwd=str(tmp_path),
                        parameters={**PRICES, "out": str(out), **parameters}, progress_bar=False)
    return load_dataset(out)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cost_notebook_reads_a_measured_file(tmp_path):
    measured = xr.Dataset({"model_ms_p50": 5.0, "bitrate_kbps": 400.0},
                          attrs={**provenance(), "model": "tiny", "rung": "high"})
    save_dataset(measured, tmp_path / "measured.nc")
    ds = run(tmp_path, measured=str(tmp_path / "measured.nc"), utilization=0.5, idle_headroom=0.0,
             cold_starts_per_gpu_hour=0.0, relay_pct=0.0, concurrency=[1, 2, 4, 8, 16])
    for k in PROVENANCE_KEYS:
        assert k in ds.attrs, k
    assert ds.attrs["gpu_usd_per_hour"] == 3.5 and ds.attrs["measured_bitrate_kbps"] == 400.0
    assert (ds["ms_per_frame"] == 5.0).all()  # the measured step time, not a default
    assert set(ds["preset"].values) == {"low", "high"}
    assert ds["bitrate_kbps"].sel(preset="high") > ds["bitrate_kbps"].sel(preset="low") > 0
    # 30 fps x 5 ms / 0.5 = 0.3 GPU per session: ceil(0.3 n) GPUs for n sessions
    assert list(ds["gpus"].sel(preset="high").values) == [1, 1, 2, 3, 5]
    compute = ds["compute_usd"].sel(preset="high").values
    assert np.allclose(compute, 3.5 * np.array([1, 1, 2, 3, 5]) / np.array([1, 2, 4, 8, 16]))
    egress = ds["egress_usd"].sel(preset="high").values
    assert np.allclose(egress, float(ds["bitrate_kbps"].sel(preset="high")) / 1000 * 3600 / 8 / 1024 * 0.25)
    assert (ds["fleet_usd_per_hour"].diff("concurrency") >= 0).all()  # more sessions cost more in all
    assert (ds["total_usd"] >= ds["compute_usd"] + ds["egress_usd"] - 1e-12).all()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cost_notebook_measures_when_given_no_file(tmp_path):
    ds = run(tmp_path, concurrency=[1, 4, 64])
    assert ds.attrs["measured"].startswith("measure_toggles") and ds.attrs["measured_model"] == "tiny"
    assert 0 < float(ds["ms_per_frame"][0]) < 200  # the default toggles' step on this machine
    per_session = ds["total_usd"].sel(preset="high").values
    assert per_session[0] > per_session[-1] > 0  # sessions share GPUs
    assert ds.attrs["relay_pct"] == 10.0 and (ds["relay_usd"] > 0).all()
