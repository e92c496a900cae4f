"""Notebook 03 under papermill on a temporary copy: a short live session on the oracle, values read back
from the netCDF file it writes (not from stdout), plots rendered inline."""

import pathlib
import shutil

import pytest

from worldlab.experiments.latency import QUANTILES, STAGES
from worldlab.experiments.provenance import PROVENANCE_KEYS
from worldlab.experiments.results import load_dataset

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "03_latency_budget.ipynb"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_latency_notebook_writes_a_live_session(tmp_path):
    import papermill as pm

    src = tmp_path / "03.ipynb"
    shutil.copy(NOTEBOOK, src)
    out = tmp_path / "latency.nc"
    nb = pm.execute_notebook(str(src), str(tmp_path / "03.out.ipynb"), kernel_name="python3", cwd=str(tmp_path),
                             parameters={"model_name": "oracle", "seconds": 2.0, "out": str(out)},
                             progress_bar=False)
    ds = load_dataset(out)
    for k in PROVENANCE_KEYS:
        assert k in ds.attrs, k
    assert ds.attrs["model"] == "oracle" and ds.attrs["seconds"] == 2.0
    for stage in STAGES:
        p = [float(ds[f"{stage}_p{q}"]) for q in QUANTILES]
        assert 0 <= p[0] <= p[1] <= p[2] < 1000, (stage, p)
    assert float(ds["g2g_ms_p50"]) > float(ds["model_ms_p50"]) + float(ds["queue_ms_p50"])
    assert float(ds["rtt_ms_p50"]) > 0 and float(ds["decode_ms_p50"]) > 0
    assert 24 <= float(ds["fps_actual"].mean()) <= 31 and (ds["fps_target"] == 30).all()
    assert ds.attrs["actions_reflected"] >= 3
    # the plots cell rendered HoloViews/Bokeh output, not an error
    plot_cell = next(c for c in nb.cells if c.cell_type == "code" and "latency_plots(ds)" == c.source.strip())
    assert any("application/vnd.holoviews_load.v0+json" in o.get("data", {}) or "text/html" in o.get("data", {})
               for o in plot_cell.outputs)
