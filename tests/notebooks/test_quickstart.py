"""The quickstart is a tested artifact: papermill runs it headless with tiny parameters and we read back the
results file it writes (the Player must report that no front end is attached and still record)."""

import pathlib

import numpy as np
import pytest

from worldlab.evaluate import PSNR_CAP
from worldlab.experiments.provenance import PROVENANCE_KEYS, checkpoint_sha256
from worldlab.experiments.results import load_dataset

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "worldlab" / "checkpoints" / "tiny.safetensors"
MEASURED = [("fp32", "short", "none"), ("w4a4", "short", "none"), ("w4a4", "long", "none"), ("w4a4", "long", "nvfp4")]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("model_name", ["oracle", "tiny", "conv"])
def test_quickstart_runs_headless_under_papermill(tmp_path, model_name):
    import papermill as pm

    if model_name == "tiny" and not SHIPPED.is_file():
        pytest.skip("no shipped checkpoint")
    out = tmp_path / "quickstart.nc"
    pm.execute_notebook(str(ROOT / "notebooks" / "01_quickstart.ipynb"), str(tmp_path / "quickstart.out.ipynb"),
                        parameters={"model_name": model_name, "record_seconds": 1.0, "eval_seeds": [1],
                                    "eval_steps": 4, "out": str(out)},
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    ds = load_dataset(out)
    assert set(PROVENANCE_KEYS) <= set(ds.attrs)
    assert ds.attrs["model"] == model_name and ds.attrs["frontend"] == "none attached"
    assert 20 <= ds.attrs["live_frames"] <= 40 and ds.attrs["live_fps_actual"] >= 20  # 1 s at 30 fps
    if model_name == "oracle":
        assert "psnr" not in ds and ds.attrs["checkpoint_sha256"] == "none"
        return
    if model_name == "conv":  # a plug-in with fixed toggles: only the setting it supports is measured, on its file
        from worldlab.model.conv import SHIPPED as CONV

        assert ds.attrs["checkpoint_sha256"] == checkpoint_sha256(CONV)
        assert ds.psnr_mean.size == 1 and (ds.weights.item(), ds.window.item(), ds.kv.item()) == MEASURED[0]
        assert 10 < ds.psnr_mean.item() <= PSNR_CAP and ds.kv_bytes.item() == 0
        return
    assert ds.attrs["checkpoint_sha256"] == checkpoint_sha256(SHIPPED)
    measured = [c for c in np.ndindex(ds.psnr_mean.shape) if np.isfinite(ds.psnr_mean.values[c])]
    labels = sorted(tuple(ds[d].values[i] for d, i in zip(("weights", "window", "kv"), c)) for c in measured)
    assert labels == sorted(MEASURED)
    cell = lambda w, win, kv: ds.sel(weights=w, window=win, kv=kv)  # noqa: E731
    assert 10 < float(cell("fp32", "short", "none").psnr_mean) <= PSNR_CAP
    assert cell("w4a4", "long", "nvfp4").psnr.sizes == {"seed": 1, "step": 4}
    # NVFP4 KV: under a sixth of the fp32 cache at the same window; the long window holds more than the short
    assert cell("w4a4", "long", "nvfp4").kv_bytes < cell("w4a4", "long", "none").kv_bytes / 6
    assert cell("w4a4", "long", "none").kv_bytes > cell("w4a4", "short", "none").kv_bytes
    assert ds.attrs["live_kv_bytes_nvfp4_long"] < 0.3 * ds.attrs["live_kv_bytes"] * 2
