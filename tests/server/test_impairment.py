"""A short run of benchmarks/impair_bench.py --client python: over 2 % loss and 40 +- 10 ms each way a session
keeps streaming and steering, and after a 3 s outage the same peer connection streams again without a new
offer; and the shim leaves aioice as it found it. The served page in Chromium: tests/browser/test_impaired_page.py.
The long run's figures are in README (Reliability and security)."""

import pytest

from benchmarks.impair_bench import measure


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_impaired_session_streams_steers_and_recovers_from_an_outage():
    out = measure(seconds=6.0, outage_s=3.0)
    impaired, outage, after = (out["phases"][k] for k in ("impaired", "outage", "after_outage"))
    assert 1.0 <= impaired["datagram_loss_pct"] <= 4.0, out  # the impairment is really applied
    assert impaired["fps"] >= 20 and outage["fps"] < 5, out
    assert out["g2g_ms"]["n"] >= 5 and out["g2g_ms"]["p50"] > 80, out  # keys answered; 80 ms RTT is in it
    assert out["recovered_after_outage_s"] < 10 and after["fps"] >= 20, out


def test_the_shim_is_uninstalled_after_use_even_on_error():
    """benchmarks/impairment.py patches aioice for the whole process: it must leave it as it found it."""
    import aioice.ice

    from benchmarks.impairment import Impairment

    proto = aioice.ice.StunProtocol
    before = (proto.datagram_received, proto.connection_made)
    imp = Impairment(loss=0.5, delay_ms=10, jitter_ms=1)
    with pytest.raises(RuntimeError, match="boom"), imp.installed():
        assert (proto.datagram_received, proto.connection_made) != before
        with pytest.raises(RuntimeError, match="already installed"), Impairment(0, 0, 0).installed():
            pass
        raise RuntimeError("boom")
    assert (proto.datagram_received, proto.connection_made) == before
