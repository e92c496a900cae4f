"""A short run of benchmarks/soak_bench.py: two sessions on the shipped tiny model for 30 s keep their
frame rate and a flat KV cache (one kv_bytes value once the window is full). The 10-minute figures (RSS
drift, fps) are in README (Reliability and security)."""

import pytest

from benchmarks.soak_bench import measure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_short_soak_keeps_fps_and_a_flat_kv_cache():
    out = measure(sessions=2, minutes=0.5, model="tiny", sample_s=2.0)
    kv = out["kv_bytes_values_after_warmup"]
    assert len(kv) == 1 and kv[0] > 0, out["samples"][-3:]
    assert out["fps_actual_min"] >= 20, out["samples"][-3:]
    assert len(out["samples"]) >= 10 and all(s["rss_mb"] > 50 for s in out["samples"])
