"""A short run of benchmarks/fuzz_bench.py (hypothesis, derandomized): random /offer bodies, split and slow,
mutated SDP, and random data-channel messages never give a 5xx or a non-JSON error, and neither the fuzzed
session nor a witness session stops streaming. The long run's figures are in README (Reliability)."""

import pytest

from benchmarks.fuzz_bench import run

# aiortc's SCTP stack draws from the `random` module while hypothesis runs the data-channel fuzzer.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")]


def test_fuzz_short_run():
    out = run(offers=250, messages=400)
    assert out["http_5xx"] == 0 and out["non_json_errors"] == 0, out
    assert out["fuzzed_session_alive"], out
    assert out["witness_fps"] > 15, out  # streaming on (the figure itself is the benchmark's to report)
    assert {"bad_json", "bad_field"} <= set(out["error_codes"]) and "bad_version" in out["ctl_error_codes"]
