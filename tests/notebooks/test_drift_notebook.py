"""Notebook 04 (long-horizon drift) runs headless under papermill from a copy, with tiny parameters, and the
netCDF it writes is read back and checked: dims, PSNR range, the sink toggle's effect on the cache, provenance."""

import pathlib
import shutil

import pytest

from worldlab.evaluate import PSNR_CAP
from worldlab.experiments.provenance import PROVENANCE_KEYS
from worldlab.experiments.results import load_dataset

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "04_drift.ipynb"
SHIPPED = ROOT / "worldlab" / "checkpoints" / "tiny.safetensors"



@pytest.mark.slow
@pytest.mark.timeout(300)
def test_drift_notebook_runs_headless_and_records_its_results(tmp_path):
    import papermill as pm

    if not SHIPPED.is_file():
        pytest.skip("no shipped checkpoint")
    src = tmp_path / "04_drift.ipynb"
    shutil.copy(NOTEBOOK, src)
    out = tmp_path / "drift.nc"
    nb = pm.execute_notebook(str(src), str(tmp_path / "04_drift.out.ipynb"), cwd=str(tmp_path), kernel_name="python3",
                             progress_bar=False,
                             parameters={"steps": 12, "seeds": [1], "anchors": ["sink", "none"], "windows": ["short"],
                                         "kvs": ["none", "nvfp4"], "out": str(out)})
    ds = load_dataset(out)
    assert ds["psnr"].dims == ("anchor", "window", "kv", "seed", "step")
    assert dict(ds.sizes) == {"anchor": 2, "window": 1, "kv": 2, "seed": 1, "step": 12, "channel": 3}
    assert ((ds["psnr"] > 10) & (ds["psnr"] <= PSNR_CAP)).all()
    assert ((ds["psnr_head"] > 20) & (ds["psnr_head"] <= PSNR_CAP)).all()
    assert (ds["off_palette"] == 0).all()
    assert list(ds["sink_frames"].sel(window="short", kv="none").values) == [1, 0]
    kv = ds["kv_bytes"].sel(window="short", seed=1)
    assert (kv.sel(kv="nvfp4") < kv.sel(kv="none") / 5).all()
    assert (kv.sel(anchor="none") < kv.sel(anchor="sink")).all()
    assert all(k in ds.attrs for k in PROVENANCE_KEYS) and ds.attrs["steps"] == 12
    plots = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if "application/vnd.holoviews_exec.v0+json" in o.get("data", {})]
    assert plots, "the figures cell showed no HoloViews plot"
