"""A Grafana dashboard for the Prometheus metrics `worldlab serve` exports at /metrics; every metric and stage
it reads is checked against a live scrape (tests/server/test_grafana.py), so no panel reads a renamed one.

`worldlab grafana --out FILE` (commands/ops_cmds.py) writes it; import it in Grafana (Dashboards -> Import) and pick the Prometheus
data source that scrapes the server. docs/grafana/worldlab.json is this module's output.
"""

from __future__ import annotations

import json

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
QUANTILES = (0.5, 0.95, 0.99)
WIDTH, HEIGHT = 12, 8  # half the 24-column grid per panel
ROOM = "{{room}}"  # legend: per-room series on a trusted (loopback or admin) scrape
SERVER_STAGES = ("model_ms", "encode_ms", "queue_ms")  # timed by the server for every frame
CLIENT_STAGES = ("rtt_ms", "g2g_ms", "decode_ms")  # RTCP receiver reports and the player page's reports


def _panel(title: str, targets: list[tuple[str, str]], unit: str, kind: str = "timeseries", **defaults) -> dict:
    return {"type": kind, "title": title, "datasource": DATASOURCE,
            "targets": [{"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i), "datasource": DATASOURCE}
                        for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []}, "options": {}}


def _stage_quantiles(stages) -> list[tuple[str, str]]:
    out = []
    for q in QUANTILES:
        out.append((f'histogram_quantile({q}, sum by (le, stage) (rate(worldlab_stage_ms_bucket{{stage=~"{stages}"}}[1m])))',
                    f"{{{{stage}}}} p{round(q * 100)}"))
    return out


def panels() -> list[dict]:
    """The panels, in reading order: is it streaming (fps, drops), is it fast (g2g vs SLO, stages), what does
    it cost (bitrate, relay, KV), is it healthy (rooms, caps, anomalies, drain)."""
    server_stages, client_stages = "|".join(SERVER_STAGES), "|".join(CLIENT_STAGES)
    rows = [
        _panel("fps actual vs target, per room", [("worldlab_fps_actual", f"{ROOM} actual"),
                                                  ("worldlab_fps_target", f"{ROOM} target")], "fps", min=0),
        _panel("frames dropped (%)", [("worldlab_drop_pct", ROOM)], "percent", min=0),
        _panel("glass-to-glass p95 vs the SLO", [("worldlab_g2g_p95_ms", f"{ROOM} p95"),
                                                 ("worldlab_slo_g2g_ms", "SLO")], "ms", min=0),
        _panel("rooms meeting the g2g SLO", [("worldlab_slo_rooms_meeting", "share")], "percentunit", kind="stat",
               min=0, max=1),
        _panel("server stages p50 / p95 / p99", _stage_quantiles(server_stages), "ms", min=0),
        _panel("page stages and RTT p50 / p95 / p99", _stage_quantiles(client_stages), "ms", min=0),
        _panel("video bitrate", [("worldlab_bitrate_kbps", ROOM)], "Kbits", min=0),
        _panel("relayed (TURN) share of the stream", [("worldlab_relay_pct", ROOM)], "percent", min=0, max=100),
        _panel("KV cache per session", [("worldlab_kv_bytes", ROOM)], "bytes", min=0),
        _panel("live rooms and drain", [("worldlab_rooms", "rooms"), ("worldlab_draining", "draining")], "none", min=0),
        _panel("cost caps hit (per minute)", [("sum by (code) (rate(worldlab_cap_hits_total[5m])) * 60", "{{code}}")],
               "none", min=0),
        _panel("anomaly alerts (per minute)", [("sum by (kind) (rate(worldlab_anomalies_total[5m])) * 60", "{{kind}}")],
               "none", min=0),
    ]
    for i, p in enumerate(rows):
        p["id"] = i + 1
        p["gridPos"] = {"x": (i % 2) * WIDTH, "y": (i // 2) * HEIGHT, "w": WIDTH, "h": HEIGHT}
    return rows


def dashboard() -> dict:
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus",
                      "pluginName": "Prometheus", "description": "the Prometheus that scrapes worldlab serve's /metrics"}],
        "title": "worldlab serve", "uid": "worldlab-serve", "tags": ["worldlab"], "editable": True,
        "schemaVersion": 39, "time": {"from": "now-15m", "to": "now"}, "refresh": "5s", "timezone": "",
        "templating": {"list": []}, "annotations": {"list": []}, "panels": panels(),
    }


def write(path) -> None:
    with open(path, "w") as f:
        json.dump(dashboard(), f, indent=1)
        f.write("\n")
