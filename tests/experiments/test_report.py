"""`worldlab report`: the toggle table holds the measured values, the HTML page is self-contained and
renders in Debian Chromium with no console errors, the notebook version executes under papermill, and bad
input is one line with exit code 2 and no file left behind."""

import json
import re
import sys

import numpy as np
import pytest
import xarray as xr

from tests.browser_support import chromium_browser, evidence_path, have_chromium
from worldlab.cli import main
from worldlab.config import Toggles
from worldlab.evaluate import PSNR_CAP
from worldlab.experiments import plots
from worldlab.experiments.provenance import provenance
from worldlab.experiments.report import write_report
from worldlab.experiments.results import save_dataset

CONFIGS = {("fp32", "none"): "ok", ("fp32", "nvfp4"): "failed", ("w4a4", "none"): "failed",
           ("w4a4", "nvfp4"): "cached"}
ERROR = "RuntimeError: <boom> & out of memory"


def _point(ds, weights, kv, status):
    """One grid point as the sweep stores it: the toggles as length-1 dims, status/error beside the data."""
    ds = ds.drop_encoding().assign_coords(weights=weights, kv=kv)
    if status == "failed":
        ds = ds.copy(deep=True)
        for name, var in ds.data_vars.items():
            ds[name] = var.astype(float) * np.nan
    ds["status"] = status
    ds["error"] = ERROR if status == "failed" else ""
    return ds.expand_dims(["weights", "kv"])


@pytest.fixture(scope="module")
def measured():
    """Two real configurations, 2 seeds x 6 steps (a few seconds)."""
    from worldlab.experiments.measure import measure_toggles

    return {("fp32", "none"): measure_toggles(Toggles("fp32", "short", "none"), [1, 2], 6),
            ("w4a4", "nvfp4"): measure_toggles(Toggles("w4a4", "short", "nvfp4"), [1, 2], 6)}


@pytest.fixture(scope="module")
def sweep(measured):
    """A 2 x 2 sweep over weights and kv: one ok, one cached, two failed grid points."""
    real = measured[("fp32", "none")]
    rows = [xr.concat([_point(measured.get((w, k), real), w, k, CONFIGS[(w, k)]) for k in ("none", "nvfp4")], "kv")
            for w in ("fp32", "w4a4")]
    ds = xr.concat(rows, "weights")
    ds.attrs.update({"grid": json.dumps({"weights": ["fp32", "w4a4"], "kv": ["none", "nvfp4"], "window": "short",
                                         "seeds": [1, 2], "steps": 6}), "notebook": "02_three_toggles"})
    return ds


@pytest.fixture(scope="module")
def files(tmp_path_factory, measured, sweep):
    d = tmp_path_factory.mktemp("results")
    return {"sweep": save_dataset(sweep, d / "sweep.nc"),
            "single": save_dataset(measured[("fp32", "none")], d / "single.nc"),
            "latency": save_dataset(_latency_dataset(), d / "latency.nc")}


@pytest.fixture(scope="module")
def html_report(files):
    out = files["sweep"].with_name("report.html")
    assert main(["report", str(files["sweep"]), "--out", str(out)]) == 0
    return out


def _latency_dataset():
    """A latency result in the shape worldlab.experiments.latency writes (stage samples and percentiles)."""
    from worldlab.experiments.latency import QUANTILES, STAGES

    rng = np.random.default_rng(0)
    ds = xr.Dataset({s: ("action", rng.uniform(1, 30, 20)) for s in STAGES}, coords={"action": np.arange(20)})
    for s in STAGES:
        for q in QUANTILES:
            ds[f"{s}_p{q}"] = float(np.percentile(ds[s], q))
    ds["fps_actual"] = ("second", np.array([29.0, 30.0, 28.0]))
    ds["fps_target"] = ("second", np.full(3, 30.0))
    ds = ds.assign_coords(second=np.arange(3))
    ds.attrs.update({**provenance(), "model": "oracle", "window_s": 3.0})
    return ds


def _row(html: str, weights: str, kv: str) -> list[str]:
    """The cells of the toggle-table row for (weights, kv), as text."""
    table = html.split('id="toggle-table"', 1)[1].split("</table>", 1)[0]
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", tr)
        if cells[:3] == [weights, "short", kv]:
            return cells
    raise AssertionError(f"no table row for {weights} / {kv}")


def test_toggle_table_has_one_row_per_configuration_with_its_values(sweep):
    df = plots.toggle_table(sweep)
    assert list(df.index) == ["fp32 / short / kv none", "fp32 / short / kv nvfp4", "w4a4 / short / kv none",
                              "w4a4 / short / kv nvfp4"]
    assert list(df["status"]) == ["ok", "failed", "failed", "cached"]
    for (w, k), status in CONFIGS.items():
        row, point = df.loc[f"{w} / short / kv {k}"], sweep.sel(weights=w, kv=k)
        for var, col in (("psnr_mean", "PSNR mean (dB)"), ("model_ms_p50", "model ms p50"),
                         ("kv_bytes", "KV cache (bytes)"), ("ssim_mean", "SSIM"), ("encode_ms_p50", "encode ms p50")):
            np.testing.assert_equal(row[col], float(point[var]))
        assert np.isnan(row["PSNR mean (dB)"]) == (status == "failed")
    assert df.loc["w4a4 / short / kv nvfp4", "KV cache (bytes)"] < df.loc["fp32 / short / kv none", "KV cache (bytes)"]


def test_single_run_is_one_configuration(measured):
    df = plots.toggle_table(measured[("fp32", "none")])
    assert list(df.index) == ["fp32 / short / kv none"] and "status" not in df
    assert 10 < df.iloc[0]["PSNR mean (dB)"] <= PSNR_CAP


def test_psnr_vs_step_pools_mse_over_seeds_so_exact_frames_stay_finite():
    # Seed 1 is exact (MSE 0, PSNR at the cap), seed 2 is not: the curve is the PSNR of the mean MSE.
    mse = np.array([[0.0, 0.0], [50.0, 200.0]])
    ds = xr.Dataset({"mse": (("seed", "step"), mse), "psnr": (("seed", "step"), np.full((2, 2), PSNR_CAP))},
                    coords={"seed": [1, 2], "step": [1, 2], "weights": "fp32", "window": "short", "kv": "none"})
    pooled = plots.pooled_psnr_per_step(ds).values
    np.testing.assert_allclose(pooled, 10 * np.log10(255.0**2 / np.array([25.0, 100.0])))
    (curve,) = plots.psnr_vs_step(ds)
    np.testing.assert_allclose(curve.dimension_values("psnr"), pooled)
    assert curve.label == "fp32 / short / kv none"


def test_html_report_is_self_contained_with_table_provenance_and_failures(html_report, sweep):
    html = html_report.read_text()
    for section in ("provenance", "toggle-table", "fidelity-speed-memory", "psnr-vs-step", "failed"):
        assert f'<section id="{section}">' in html
    assert 'id="latency"' not in html  # no latency data in a toggle sweep
    assert sweep.attrs["git_commit"] in html and sweep.attrs["checkpoint_sha256"] in html
    assert "02_three_toggles" in html and "weights: [&quot;fp32&quot;, &quot;w4a4&quot;]" in html
    ok = _row(html, "fp32", "none")
    point = sweep.sel(weights="fp32", kv="none")
    assert ok[3] == "ok"
    assert ok[4:6] == [f"{float(point.psnr_step1):.2f}", f"{float(point.psnr_mean):.2f}"]
    assert f"{int(point.kv_bytes):,}" in ok
    assert _row(html, "w4a4", "nvfp4")[3] == "cached"
    assert _row(html, "fp32", "nvfp4")[3:6] == ["failed", "—", "—"]
    failed = html.split('id="failed"', 1)[1]
    assert failed.count("RuntimeError: &lt;boom&gt; &amp; out of memory") == 2 and "<boom>" not in html
    # Offline: BokehJS inline, nothing fetched from anywhere.
    assert "cdn.bokeh.org" not in html and "Bokeh.embed" in html
    assert not re.search(r"<script[^>]+src=", html) and not re.search(r"<link[^>]+href=", html)
    assert html.count("data-root-id=") == 3  # scatter, KV bars, PSNR curves
    assert [p.name for p in html_report.parent.iterdir() if p.name.startswith(".")] == []  # no partial left


def test_single_run_and_latency_reports(files):
    single = write_report(files["single"], files["single"].with_suffix(".html")).read_text()
    assert single.count("<tr><td>fp32</td><td>short</td><td>none</td>") == 1
    assert 'id="failed"' not in single and 'id="latency"' not in single
    latency = write_report(files["latency"], files["latency"].with_suffix(".html")).read_text()
    assert 'id="toggle-table"' not in latency
    section = latency.split('<section id="latency">', 1)[1].split("</section>", 1)[0]
    assert "data-root-id=" in section  # latency_plots' figure
    assert "<td>g2g_ms</td>" in section and "<td>capture_ms</td>" in section  # the stage percentile table


@pytest.mark.browser
@pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")
def test_html_report_renders_in_chromium_without_console_errors(html_report, files, tmp_path):
    from playwright.sync_api import sync_playwright

    latency = write_report(files["latency"], files["latency"].with_suffix(".html"))
    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        for path, figures in ((html_report, 3), (latency, 1)):
            page = ctx.new_page()
            problems = []
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(path.as_uri())
            figs = page.locator("div.figure")
            assert figs.count() == figures
            for i in range(figures):
                canvas = figs.nth(i).locator("canvas").first  # inside Bokeh's shadow DOM
                canvas.wait_for(state="visible", timeout=20000)
                box = canvas.bounding_box()
                assert box["width"] > 200 and box["height"] > 100, box
            page.wait_for_function("Bokeh.documents.length > 0 && Bokeh.documents.every(d => d.is_idle)",
                                   timeout=20000)
            page.wait_for_timeout(300)
            for i in range(figures):  # something was drawn: not one flat colour
                png = figs.nth(i).screenshot()
                assert _colours(png) > 10, f"figure {i} of {path.name} looks blank"
            page.screenshot(path=str(evidence_path(tmp_path, "report", path.stem + ".png")), full_page=True)
            assert problems == [], problems
            page.close()


def _colours(png: bytes) -> int:
    import io

    from PIL import Image

    return len(Image.open(io.BytesIO(png)).convert("RGB").getcolors(1 << 20) or [])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_notebook_report_executes_under_papermill(files, tmp_path):
    import nbformat
    import papermill as pm

    out = tmp_path / "report.ipynb"
    assert main(["report", str(files["sweep"]), "--out", str(out)]) == 0
    nb = nbformat.read(out, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    ran = pm.execute_notebook(str(out), str(tmp_path / "ran.ipynb"), kernel_name="python3", cwd=str(tmp_path),
                              progress_bar=False)
    outputs = [o for c in ran.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    for label in ("fp32 / short / kv none", "w4a4 / short / kv nvfp4"):
        assert label in html
    assert "RuntimeError: &lt;boom&gt;" in html  # the failed points' table
    shown = [o.data["text/plain"] for o in outputs if o.output_type == "execute_result"
             and "application/vnd.holoviews_exec.v0+json" in o.data]
    assert [r.split()[0] for r in shown] == [":Layout", ":Overlay"]  # fidelity/speed/memory, PSNR vs step


@pytest.mark.parametrize("case", ["missing", "corrupt", "foreign", "no-metrics", "missing-dir", "suffix"])
def test_bad_input_is_one_line_exit_2_and_no_file(case, files, tmp_path, capsys):
    results, out = files["single"], tmp_path / "report.html"
    if case == "missing":
        results = tmp_path / "nope.nc"
    elif case == "corrupt":
        results = tmp_path / "corrupt.nc"
        results.write_bytes(files["single"].read_bytes()[:2000])
    elif case == "foreign":
        results = tmp_path / "foreign.nc"
        xr.Dataset({"x": ("t", [1.0, 2.0])}).to_netcdf(results, engine="h5netcdf")
    elif case == "no-metrics":
        results = save_dataset(xr.Dataset({"x": ("t", [1.0])}, attrs=provenance()), tmp_path / "empty.nc")
    elif case == "missing-dir":
        out = tmp_path / "missing" / "report.html"
    elif case == "suffix":
        out = tmp_path / "report.pdf"
    before = set(tmp_path.iterdir())
    assert main(["report", str(results), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("worldlab report: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert set(tmp_path.iterdir()) == before


def test_console_script_reports_a_missing_file_in_one_line(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "worldlab.cli", "report", str(tmp_path / "nope.nc"), "--out",
                           str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"worldlab report: error: no results file at {tmp_path / 'nope.nc'}"]
    assert list(tmp_path.iterdir()) == []


def test_markdown_table_lists_every_configuration_with_its_figures(files, sweep):
    out = files["sweep"].with_name("table.md")
    assert main(["report", str(files["sweep"]), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines[2:] if line.startswith("| ")}
    assert set(rows) == {"fp32 / short / kv none", "fp32 / short / kv nvfp4", "w4a4 / short / kv none",
                         "w4a4 / short / kv nvfp4"}
    head = [c.strip("| ") for c in lines[0].split(" | ")]
    ok = dict(zip(head, (c.strip("| ") for c in rows["fp32 / short / kv none"])))
    assert ok["status"] == "ok" and ok["KV cache (bytes)"] == str(int(sweep.kv_bytes.sel(weights="fp32", kv="none")))
    assert ok["PSNR mean (dB)"] == f"{float(sweep.psnr_mean.sel(weights='fp32', kv='none')):.2f}"
    failed = dict(zip(head, (c.strip("| ") for c in rows["w4a4 / short / kv none"])))
    assert failed["status"] == "failed" and failed["PSNR mean (dB)"] == "—"
    assert "checkpoint " + sweep.attrs["checkpoint_sha256"][:16] in lines[-1]


def test_drift_results_get_their_own_section_and_markdown_table(tmp_path):
    from worldlab.experiments.drift import measure_drift

    ds = measure_drift([1], 12, {"anchor": ["sink", "none"], "window": ["short"], "kv": ["none"]})
    src = save_dataset(ds, tmp_path / "drift.nc")
    assert main(["report", str(src), "--out", str(tmp_path / "drift.html")]) == 0
    page = (tmp_path / "drift.html").read_text()
    assert "Long-horizon drift" in page and "Toggle table" not in page and page.count('class="figure"') == 1
    assert main(["report", str(src), "--out", str(tmp_path / "drift.md")]) == 0
    rows = [line for line in (tmp_path / "drift.md").read_text().splitlines() if line.startswith("| anchor")]
    assert [r.split(" | ")[0] for r in rows] == ["| anchor sink / short / kv none", "| anchor none / short / kv none"]
    assert rows[0].split(" | ")[1] == f"{float(ds.psnr_head.isel(anchor=0, window=0, kv=0)):.2f}"
