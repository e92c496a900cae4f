"""/metrics: the metric dictionary as Prometheus gauges, read live at scrape time.

Per room (label `room`) for a trusted (loopback) scrape; otherwise one unlabelled gauge per metric, the
mean over live rooms, so that room ids (which admit spectators) are not listed to anyone who asks.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from worldlab.engine.metrics import METRICS


class HubCollector:
    def __init__(self, hub, per_room: bool = True):
        self.hub = hub
        self.per_room = per_room

    def collect(self):
        how = "p50 over the last 5 s where timed"
        if not self.per_room:
            how += "; mean over live rooms"
        families = {m: GaugeMetricFamily(f"worldlab_{m}", f"worldlab {m} ({how})",
                                         labels=["room"] if self.per_room else []) for m in METRICS}
        rooms = GaugeMetricFamily("worldlab_rooms", "live rooms")
        rooms.add_metric([], len(self.hub.rooms))
        values: dict[str, list[float]] = {m: [] for m in METRICS}
        for room in list(self.hub.rooms.values()):
            st = self.hub.stats(room)
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
