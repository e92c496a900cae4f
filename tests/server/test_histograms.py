"""/metrics latency histograms and the room-level SLO, end to end: `worldlab serve`'s app (oracle) in process,
an aiortc client through POST /offer, key presses and page reports; the histogram counts must match what
happened (frames sent, inputs applied, reports sent, RTCP receiver reports), not merely exist."""

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.transport.test_hardening import until
from worldlab.config import SessionConfig
from worldlab.engine.oracle import EnvOracle
from worldlab.server import build_app
from worldlab.server import metrics as prom
from worldlab.server.app import HUB, PUBLIC_REGISTRY
from worldlab.transport.client import PeerClient

pytestmark = pytest.mark.timeout(120)


def scrape(text: str) -> dict:
    """(sample name, frozenset of labels) -> value, for every sample in a Prometheus text page."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def stage(samples: dict, name: str, suffix: str, **labels) -> float:
    return samples[(f"worldlab_stage_ms_{suffix}", frozenset({"stage": name, **labels}.items()))]


async def test_stage_histograms_and_the_g2g_slo():
    cfg = SessionConfig(slo_g2g_ms=100.0)
    app = build_app(EnvOracle(seed=2), config=cfg)
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        client = PeerClient(keep_frames=False)
        try:
            ans = await client.connect_http(http.session, str(http.make_url("/offer")))
            room = app[HUB].rooms[ans["room"]]
            await client.wait_for(lambda: client.n_frames >= 10)
            presses = [["right"], [], ["up"], []]
            for keys in presses:  # far enough apart that each is applied by a frame of its own
                seq = client.send(type="action", keys=keys, t=0)
                await client.wait_for(lambda: any(m["type"] == "ack" and m["seq"] == seq for m in client.msgs))
                await asyncio.sleep(0.2)
            # RTCP: the client's receiver reports answer the server's sender reports about once a second. Wait on
            # the count: a loopback RTT can be exactly 0 ms (RTCP's 1/65536 s units), which leaves the sum at 0.0.
            await until(lambda: b'_count{stage="rtt_ms"} 0.0' not in prom.render(app[PUBLIC_REGISTRY]), timeout=20)
            client.send(type="report", g2g_ms=61.5, g2g_ms_p95=150.0, decode_ms=2.0)
            client.send(type="report", g2g_ms=120.0, g2g_ms_p95=90.0)  # reports count for 3 s: send them last
            await until(lambda: room.page_report() is not None
                        and room.page_report()["g2g_ms_p95"] == 90.0)

            s = scrape(await (await http.get("/metrics")).text())
            consumed = room.session.slot.consumed  # new frames taken by the track; each one observed when sent
            n_model = stage(s, "model_ms", "count")
            assert consumed - 1 <= n_model <= consumed and n_model >= 10
            assert stage(s, "encode_ms", "count") == n_model
            assert stage(s, "model_ms", "bucket", le="+Inf") == n_model
            buckets = [stage(s, "model_ms", "bucket", le=f"{b:.1f}") for b in cfg.latency_buckets_ms]
            assert buckets == sorted(buckets) and buckets[-1] <= n_model
            assert 0 < stage(s, "model_ms", "sum") / n_model < 1000
            # One input applied per press: each is the newest seq of exactly one sent frame.
            assert stage(s, "queue_ms", "count") == len(presses)
            # The page's reports: one observation each (decode_ms only where the report had it).
            assert stage(s, "g2g_ms", "count") == 2 and stage(s, "g2g_ms", "sum") == 181.5
            assert stage(s, "g2g_ms", "bucket", le="100.0") == 1
            assert stage(s, "decode_ms", "count") == 1 and stage(s, "decode_ms", "sum") == 2.0
            n_rtt = stage(s, "rtt_ms", "count")
            assert n_rtt >= 1 and 0 <= stage(s, "rtt_ms", "sum") / n_rtt < 500  # loopback: 0 ms is a real sample
            # SLO: the page's freshest p95 (90 ms) meets the 100 ms target.
            assert s[("worldlab_slo_g2g_ms", frozenset())] == 100.0
            assert s[("worldlab_g2g_p95_ms", frozenset({"room": room.id}.items()))] == 90.0
            assert s[("worldlab_slo_rooms_meeting", frozenset())] == 1.0

            client.send(type="report", g2g_ms=130.0, g2g_ms_p95=180.0)
            await until(lambda: room.page_report()["g2g_ms_p95"] == 180.0)
            public = scrape(prom.render(app[PUBLIC_REGISTRY]).decode())
            assert room.id not in str(public)  # no room ids for an untrusted scrape
            assert public[("worldlab_g2g_p95_ms", frozenset())] == 180.0  # the worst room
            assert public[("worldlab_slo_rooms_meeting", frozenset())] == 0.0
            assert stage(public, "g2g_ms", "count") == 3
        finally:
            await client.close()


def test_no_reporting_room_means_no_slo_share():
    """Rooms whose page has not reported count neither way: the share is absent, never a fake 0 or 1."""
    class Hub:
        rooms, cfg = {}, SessionConfig()
    families = {f.name: f for f in prom.HubCollector(Hub())._slo_metrics({})}
    assert families["worldlab_slo_g2g_ms"].samples[0].value == 100.0
    assert families["worldlab_slo_rooms_meeting"].samples == [] and families["worldlab_g2g_p95_ms"].samples == []
