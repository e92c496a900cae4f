"""/metrics: the metric dictionary as Prometheus gauges, read live at scrape time.

Per room (label `room`) for a trusted (loopback) scrape; otherwise one unlabelled gauge per metric, the
mean over live rooms, so that room ids (which admit spectators) are not listed to anyone who asks.

The page-side stages (PAGE_METRICS) are measured by the player's page, not the server: they come from its
latest `report` on the ctl channel (Room.page_report; p50 over the page's recent samples) and are
absent for a room whose player page has not reported in the last 3 s. Cost controls add
worldlab_anomalies_total{kind}, worldlab_cap_hits_total{code} and worldlab_draining.

Latency histograms (StageHistograms): worldlab_stage_ms{stage} over every server, p50/p95/p99 derivable with
histogram_quantile. The room-level SLO: worldlab_g2g_p95_ms (each room's page p95 g2g; the worst room for an
untrusted scrape), worldlab_slo_g2g_ms (the target) and worldlab_slo_rooms_meeting (share of rooms meeting it).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from worldlab.engine.metrics import METRICS
from worldlab.telemetry import Observer

PAGE_METRICS = ("capture_ms", "rtt_ms", "decode_ms", "g2g_ms")


class HubCollector:
    def __init__(self, hub, per_room: bool = True):
        self.hub = hub
        self.per_room = per_room

    def collect(self):
        mean = "" if self.per_room else "; mean over live rooms"
        how = {m: ("the player page's report: p50 over its recent samples" if m in PAGE_METRICS
                   else "p50 over the last 5 s where timed") + mean for m in METRICS}
        families = {m: GaugeMetricFamily(f"worldlab_{m}", f"worldlab {m} ({how[m]})",
                                         labels=["room"] if self.per_room else []) for m in METRICS}
        rooms = GaugeMetricFamily("worldlab_rooms", "live rooms")
        rooms.add_metric([], len(self.hub.rooms))
        idle = GaugeMetricFamily("worldlab_rooms_idle", "live rooms whose every peer has gone silent (no RTCP for "
                                 "peer_silence_s): two probe frames a second, left out of the per-room figures")
        n_idle = 0
        values: dict[str, list[float]] = {m: [] for m in METRICS}
        g2g_p95: dict[str, float] = {}
        for room in list(self.hub.rooms.values()):
            if room.track.idle:
                n_idle += 1
                continue
            st = room.stats()
            page = room.page_report() or {}
            if page.get("g2g_ms_p95") is not None:
                g2g_p95[room.id] = float(page["g2g_ms_p95"])
            st.update({m: page[m] for m in PAGE_METRICS if st.get(m) is None and page.get(m) is not None})
            for m in METRICS:
                if st.get(m) is not None:
                    if self.per_room:
                        families[m].add_metric([room.id], float(st[m]))
                    else:
                        values[m].append(float(st[m]))
        if not self.per_room:
            for m, vs in values.items():
                if vs:
                    families[m].add_metric([], sum(vs) / len(vs))
        idle.add_metric([], n_idle)
        yield rooms
        yield idle
        yield from families.values()
        yield from self._cost_metrics()
        yield from self._slo_metrics(g2g_p95)

    def _slo_metrics(self, g2g_p95: dict):
        """The room-level SLO: p95 g2g as the room's page computed it (engine.metrics.percentile in player.js)
        against SessionConfig.slo_g2g_ms. Rooms whose page has not reported lately count neither way."""
        target = self.hub.cfg.slo_g2g_ms
        slo = GaugeMetricFamily("worldlab_slo_g2g_ms", "the SLO target for each room's p95 g2g (ms)")
        slo.add_metric([], target)
        p95 = GaugeMetricFamily("worldlab_g2g_p95_ms", "p95 g2g of the room's page (ms)" + (
            "" if self.per_room else "; the worst live room"), labels=["room"] if self.per_room else [])
        if self.per_room:
            for room, v in g2g_p95.items():
                p95.add_metric([room], v)
        elif g2g_p95:
            p95.add_metric([], max(g2g_p95.values()))
        meeting = GaugeMetricFamily("worldlab_slo_rooms_meeting", "share of reporting rooms whose p95 g2g is at "
                                                                  "most worldlab_slo_g2g_ms (0..1)")
        if g2g_p95:
            meeting.add_metric([], sum(v <= target for v in g2g_p95.values()) / len(g2g_p95))
        yield from (slo, p95, meeting)

    def _cost_metrics(self):
        """Cost controls and drain (worldlab.transport.caps, PeerHub.start_drain): no room labels, any scrape."""
        caps = self.hub.caps
        anomalies = CounterMetricFamily("worldlab_anomalies", "sessions flagged by an anomaly alert "
                                        "(model_seconds: model time per wall second over the threshold)",
                                        labels=["kind"])
        for kind, n in caps.anomalies.counts.items():
            anomalies.add_metric([kind], n)
        hits = CounterMetricFamily("worldlab_cap_hits", "offers refused or sessions ended by a cost cap "
                                   "(server_busy: by load shedding)",
                                   labels=["code"])
        for code, n in caps.hits.items():
            hits.add_metric([code], n)
        draining = GaugeMetricFamily("worldlab_draining", "1 while the server drains (no new sessions)")
        draining.add_metric([], float(self.hub.drain_remaining() is not None))
        releaser = self.hub.releaser
        releases = CounterMetricFamily("worldlab_memory_releases", "passes freeing closed rooms' memory (a full gc "
                                       "pass, then malloc_trim; worldlab.allocator)")
        releases.add_metric([], releaser.count)
        release_s = CounterMetricFamily("worldlab_memory_release_seconds", "time spent in those passes (s)")
        release_s.add_metric([], releaser.seconds)
        yield from (anomalies, hits, draining, releases, release_s)


class StageHistograms(Observer):
    """Per-stage latency histograms (ms), one family `worldlab_stage_ms` labelled by stage (a metric dictionary
    name; `worldlab_<stage>` is taken by the rooms' p50 gauges). Server-wide, no room label: rooms come and go.

    model_ms, encode_ms: every new frame sent; queue_ms: frames that applied a newer input; rtt_ms: RTCP
    receiver reports (server-side, any client); g2g_ms, decode_ms: each player-page report (its p50)."""

    STAGES = ("model_ms", "encode_ms", "queue_ms", "rtt_ms", "g2g_ms", "decode_ms")

    def __init__(self, buckets_ms):
        self.histogram = Histogram("worldlab_stage_ms", "per-stage latency (ms) by metric dictionary name",
                                   ["stage"], buckets=buckets_ms, registry=None)
        self._stage = {s: self.histogram.labels(s) for s in self.STAGES}

    def frame(self, session, sent) -> None:
        self._stage["model_ms"].observe(sent.meta.model_ms)
        self._stage["encode_ms"].observe((sent.encode_end - sent.encode_start) * 1000)
        if sent.new_input:
            self._stage["queue_ms"].observe(sent.meta.queue_ms)

    def rtt(self, session, ms: float) -> None:
        self._stage["rtt_ms"].observe(ms)

    def page_report(self, session, body: dict) -> None:
        for stage in ("g2g_ms", "decode_ms"):
            if body.get(stage) is not None:
                self._stage[stage].observe(body[stage])


def registry_for(hub, per_room: bool = True, histograms: StageHistograms | None = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(HubCollector(hub, per_room=per_room))
    if histograms is not None:
        reg.register(histograms.histogram)
    return reg


def render(registry) -> bytes:
    return generate_latest(registry)
