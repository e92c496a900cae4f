"""One percentile definition: worldlab.engine.metrics.percentile (numpy's linear interpolation) and the page's
`pct` in player.js agree bit for bit on awkward arrays; the old nearest-rank answer is gone from both."""

import json
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from worldlab.engine.metrics import Rolling, percentile, percentiles

PLAYER_JS = pathlib.Path(__file__).resolve().parents[2] / "worldlab" / "static" / "player.js"
QS = (0, 0.1, 1, 5, 25, 33.3, 50, 66.7, 75, 90, 95, 99, 99.9, 100)


def awkward_arrays() -> list[list[float]]:
    rng = np.random.default_rng(7)
    return [
        [42.0], [1.0, 2.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0],  # even length: the median is between two
        [5.0, 5.0, 5.0, 1.0], [0.0, -0.0, 1e-9], [-3.5, 7.25, -3.5, 0.1, 9.0, 2.0, 2.0],  # ties, negatives
        [1e-300, 1e300, 1.0], [0.1, 0.2, 0.3] * 5,  # magnitudes far apart; values with no exact binary form
        list(rng.exponential(20.0, 17)), list(rng.normal(50, 10, 100)), list(rng.integers(0, 5, 33) * 1.0),
        list(rng.lognormal(3, 1, 600)),  # the page's HISTORY window length
    ]


def js_pct_source() -> str:
    m = re.search(r"^export function pct\(.*?^}\n", PLAYER_JS.read_text(), re.M | re.S)
    assert m, "player.js must define `export function pct(values, q)`"
    return m.group().removeprefix("export ")


def run_js(cases: list) -> list:
    """pct(values, q) for each [values, q] case, evaluated by node (or Debian chromium when node is absent)."""
    script = js_pct_source() + f"const cases = {json.dumps(cases)};\n"
    expr = "JSON.stringify(cases.map(([v, q]) => pct(v, q)))"
    node = shutil.which("node")
    if node is not None:
        out = subprocess.run([node, "-"], input=script + f"console.log({expr});", capture_output=True, text=True,
                             timeout=60, check=True).stdout
        return json.loads(out)
    from playwright.sync_api import sync_playwright

    from tests.browser_support import chromium_browser, have_chromium

    if not have_chromium():
        pytest.skip("neither node nor chromium to run player.js")
    with sync_playwright() as pw, chromium_browser(pw) as ctx:
        page = ctx.new_page()
        return json.loads(page.evaluate(f"() => {{ {script} return {expr}; }}"))


def test_percentile_is_numpy_linear_interpolation():
    for values in awkward_arrays():
        for q in QS:
            assert percentile(values, q) == float(np.percentile(values, q))
    assert percentile([1, 2, 3, 4], 50) == 2.5  # nearest rank (the page's old rule) said 3
    assert percentile([10, 20], 95) == pytest.approx(19.5)  # nearest rank said 20
    assert percentile([], 50) is None and percentile(np.array([]), 95) is None
    assert percentiles([1, 2, 3, 4, 5]) == {"p50": 3.0, "p95": 4.8, "p99": pytest.approx(4.96), "n": 5}
    assert percentiles([], (50,)) == {"p50": None, "n": 0}


def test_rolling_windows_use_the_one_definition():
    r = Rolling()
    for v in (1.0, 2.0, 3.0, 10.0):
        r.add("g2g_ms", v)
    assert r.p("g2g_ms", 50) == 2.5 and r.p("g2g_ms", 95) == pytest.approx(8.95)
    assert r.summary()["g2g_ms_p95"] == r.p("g2g_ms", 95) and r.p("rtt_ms", 50) is None


def test_page_pct_matches_the_server_bit_for_bit():
    cases = [[values, q] for values in awkward_arrays() for q in QS]
    got = run_js(cases + [[[], 50]])
    assert got[-1] is None  # no samples: null, like the server's None
    want = [float(np.percentile(values, q)) for values, q in cases]
    mismatches = [(c, g, w) for c, g, w in zip(cases, got, want) if g != w]
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ, e.g. {mismatches[0]}"
