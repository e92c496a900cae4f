"""A short run of benchmarks/load_bench.py: with worldlab.threads' rule, a model step beside one busy process
per core stays within a few times its quiet time (torch's default of one thread per core was x99 here), and a
live 30-fps session keeps streaming. The full figures (N = 2 x cores, before/after) are in docs/streaming.md."""

import pytest

from benchmarks.load_bench import measure
from worldlab import threads

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_busy_cpu_slows_the_step_in_proportion_and_the_session_streams_on():
    cores = threads.cores()
    out = measure("tiny", [0, cores], steps=60, session_s=2.0, before=False)
    quiet, busy = out["step"]
    assert (quiet["hogs"], busy["hogs"], busy["torch_threads"]) == (0, cores, 1)
    assert busy["p50_ratio"] <= 6, out["step"]  # time-sharing a core costs ~2x; a stalled barrier costs ~100x
    live = out["session"]["rule"]
    assert [r["hogs"] for r in live] == [0, cores]
    assert all(r["fps_received"] >= 20 for r in live), live


def test_bad_hog_counts_are_one_line(capsys):
    from benchmarks.load_bench import main

    assert main(["--hogs", "2,4"]) == 2
    assert main(["--hogs", "0,-1"]) == 2
    assert main(["--hogs", "0,two"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["load_bench: --hogs must include 0 (the quiet baseline the ratios are taken against)",
                   "load_bench: --hogs must be counts >= 0", "load_bench: --hogs must be comma-separated counts, got '0,two'"]
