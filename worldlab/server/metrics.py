"""/metrics: the metric dictionary as Prometheus gauges, one label per room, read live at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from worldlab.engine.metrics import METRICS


class HubCollector:
    def __init__(self, hub):
        self.hub = hub

    def collect(self):
        families = {m: GaugeMetricFamily(f"worldlab_{m}", f"worldlab {m} (p50 over the last 5 s where timed)",
                                         labels=["room"]) for m in METRICS}
        rooms = GaugeMetricFamily("worldlab_rooms", "live rooms")
        rooms.add_metric([], len(self.hub.rooms))
        for room in list(self.hub.rooms.values()):
            st = self.hub.stats(room)
            for m in METRICS:
                if st.get(m) is not None:
                    families[m].add_metric([room.id], float(st[m]))
        yield rooms
        yield from families.values()


def registry_for(hub) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(HubCollector(hub))
    return reg


def render(registry) -> bytes:
    return generate_latest(registry)
