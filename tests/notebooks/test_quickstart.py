"""The quickstart is a tested artifact: papermill runs it headless with tiny parameters and we read the
recorded summary back (the Player must report that no front end is attached and still record)."""

import json
import pathlib

import pytest

from worldlab.evaluate import PSNR_CAP

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "worldlab" / "checkpoints" / "tiny.safetensors"


def summary_of(nb) -> dict:
    for cell in nb.cells:
        if "summary" in cell.metadata.get("tags", []):
            for out in cell.outputs:
                text = out.get("text", "")
                if "WORLDLAB_SUMMARY " in text:
                    return json.loads(text.split("WORLDLAB_SUMMARY ", 1)[1])
    raise AssertionError("the summary cell printed nothing")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("model_name", ["oracle", "tiny"])
def test_quickstart_runs_headless_under_papermill(tmp_path, model_name):
    import papermill as pm

    if model_name == "tiny" and not SHIPPED.is_file():
        pytest.skip("no shipped checkpoint")
    out = tmp_path / "quickstart.out.ipynb"
    nb = pm.execute_notebook(str(ROOT / "notebooks" / "01_quickstart.ipynb"), str(out),
                             parameters={"model_name": model_name, "record_seconds": 1.0, "eval_steps": 4},
                             kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    res = summary_of(nb)
    s = res["summary"]
    assert s["frontend"] == "none attached"
    assert 20 <= s["frames"] <= 40 and s["fps_recorded"] >= 20  # 1 s at 30 fps
    if model_name == "tiny":
        assert s["kv_bytes_nvfp4"] < 0.3 * s["kv_bytes"] * 2  # nvfp4 vs fp32 cache at twice the window
        rows = res["table"]
        assert set(rows) == {"fp32 / short / kv none", "w4a4 / short / kv none", "w4a4 / long / kv none",
                             "w4a4 / long / kv nvfp4"}
        assert rows["w4a4 / long / kv nvfp4"]["kv_bytes"] < rows["w4a4 / long / kv none"]["kv_bytes"] / 6
        for r in rows.values():
            assert 10 < r["psnr_mean"] <= PSNR_CAP  # pooled; an exact rollout reports the cap
