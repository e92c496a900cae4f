"""/metrics: the metric dictionary as Prometheus gauges, read live at scrape time.

Per room (label `room`) for a trusted (loopback) scrape; otherwise one unlabelled gauge per metric, the
mean over live rooms, so that room ids (which admit spectators) are not listed to anyone who asks.

The page-side stages (PAGE_METRICS) are measured by the player's page, not the server: they come from its
latest `report` on the ctl channel (PeerHub.frontend_stats; p50 over the page's recent samples) and are
absent for a room whose player page has not reported in the last 3 s.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from worldlab.engine.metrics import METRICS

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
        values: dict[str, list[float]] = {m: [] for m in METRICS}
        for room in list(self.hub.rooms.values()):
            st = self.hub.stats(room)
            page = self.hub.frontend_stats(room) or {}
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
        yield rooms
        yield from families.values()


def registry_for(hub, per_room: bool = True) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(HubCollector(hub, per_room=per_room))
    return reg


def render(registry) -> bytes:
    return generate_latest(registry)
