"""Every tracked notebook: one cell tagged `parameters` whose every line papermill can read (so a sweep can
tell list parameters), the parameters its users and the docs name, and no outputs committed."""

import pathlib

import nbformat
import papermill as pm
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
PARAMETERS = {
    "01_quickstart": {"model_name", "device", "prompt", "record_seconds", "eval_seeds", "eval_steps", "out"},
    "02_three_toggles": {"weights", "window", "kv", "seeds", "steps", "out", "model_name", "checkpoint", "device", "encode",
                         "threads"},
    "03_latency_budget": {"model_name", "seconds", "weights", "window", "kv", "out"},
    "04_drift": {"steps", "seeds", "anchors", "windows", "kvs", "weights", "out"},
    "05_cost_model": {"gpu_usd_per_hour", "egress_usd_per_gb", "utilization", "relay_pct", "measured", "out"},
}


def test_every_notebook_is_listed():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == set(PARAMETERS)


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_notebook_has_one_readable_parameters_cell_and_no_outputs(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    assignments = [line for line in cells[0].source.splitlines() if line and not line.startswith("#")]
    assert len(pm.inspect_notebook(str(path))) == len(assignments)  # papermill parsed every line
    assert PARAMETERS[name] <= set(pm.inspect_notebook(str(path)))
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    if name == "05_cost_model":
        assert "EXAMPLE" in cells[0].source  # prices are labelled as examples, not facts
