"""The operators' live dashboard: scrapes a worldlab server's /metrics every second and streams, per room,
fps actual vs target, drops, g2g p95 against the SLO, bitrate and relay share into HoloViews plots.

`worldlab dashboard --server URL` serves it as a page (Panel); `Dashboard(URL).panel()` shows it in a notebook
after `pn.extension(inline=True)` (the JavaScript from the kernel: no CDN needed).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "worldlab_"
ALL_ROOMS = "all rooms (mean)"  # the series name when the scrape is not trusted with room labels
# plot title, metrics (the first solid, the rest dashed), y label
PLOTS = (("fps, actual vs target", ("fps_actual", "fps_target"), "fps"),
         ("frames dropped", ("drop_pct",), "%"),
         ("glass-to-glass p95 vs the SLO", ("g2g_p95_ms",), "ms"),
         ("video bitrate", ("bitrate_kbps",), "kbit/s"),
         ("relayed (TURN) share", ("relay_pct",), "%"))
WATCHED = tuple(m for _title, ms, _y in PLOTS for m in ms)
SERVER_WIDE = ("rooms", "slo_g2g_ms", "slo_rooms_meeting", "draining")


def fetch(url: str, token: str | None = None, timeout_s: float = 2.0) -> str:
    """The /metrics text of the server at `url`; ValueError (one line) when it cannot be had."""
    req = urllib.request.Request(url.rstrip("/") + "/metrics",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:
        raise ValueError(f"{url}/metrics answered {exc.code} {exc.reason}"
                         + (" (is --token an admin token of this server?)" if exc.code in (401, 403) else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValueError(f"cannot reach {url}/metrics ({reason}): is `worldlab serve` running there?") from None


def parse(text: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """/metrics text -> ({room: {metric: value}} for WATCHED, {server-wide gauge: value}). An untrusted scrape
    has no room labels: its single series is ALL_ROOMS (the server's mean over live rooms; g2g its worst)."""
    rooms: dict[str, dict[str, float]] = {}
    server: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix(PREFIX)
        for sample in family.samples:
            if name in SERVER_WIDE and sample.name == family.name:
                server[name] = sample.value
            elif name in WATCHED:
                rooms.setdefault(sample.labels.get("room", ALL_ROOMS), {})[name] = sample.value
    return rooms, server


class Dashboard:
    """Rows of (t, room, metric...) in a HoloViews Buffer, one per room and scrape; the plots follow it live."""

    def __init__(self, url: str, token: str | None = None, period_s: float = 1.0, history_s: float = 300.0):
        import holoviews as hv

        self.url, self.token, self.period_s = url.rstrip("/"), token, period_s
        self.t0 = time.monotonic()
        empty = pd.DataFrame({"t": pd.Series(dtype=float), "room": pd.Series(dtype=str),
                              **{m: pd.Series(dtype=float) for m in WATCHED}})
        self.buffer = hv.streams.Buffer(empty, length=int(history_s / period_s) * 16, index=False)
        self.server: dict[str, float] = {}
        self.error: str | None = None
        self.polls = 0

    def poll(self) -> int:
        """One scrape into the buffer; the number of rooms seen (0 when the server could not be reached)."""
        self.polls += 1
        try:
            rooms, self.server = parse(fetch(self.url, self.token))
        except ValueError as exc:
            self.error = str(exc)
            return 0
        self.error = None
        t = round(time.monotonic() - self.t0, 2)
        if rooms:
            rows = [{"t": t, "room": room, **{m: values.get(m, float("nan")) for m in WATCHED}}
                    for room, values in sorted(rooms.items())]
            self.buffer.send(pd.DataFrame(rows))
        return len(rooms)

    def summary(self) -> str:
        """One status line: reachable or not, live rooms, the SLO and how many rooms meet it, draining."""
        if self.error:
            return f"**{self.url}**: {self.error}"
        s = self.server
        meeting = s.get("slo_rooms_meeting")
        return (f"**{self.url}**: {int(s.get('rooms', 0))} live rooms; g2g SLO p95 ≤ {s.get('slo_g2g_ms', float('nan')):g} ms"
                f", {'no page reports yet' if meeting is None else f'{meeting:.0%} of reporting rooms meet it'}"
                f"{'; DRAINING' if s.get('draining') else ''} (scraped every {self.period_s:g} s)")

    def plot(self, title: str, metrics: tuple, ylabel: str):
        import holoviews as hv

        def draw(data):
            curves = []
            for room, rows in (data.groupby("room") if len(data) else ()):
                for i, m in enumerate(metrics):
                    label = room if len(metrics) == 1 else f"{room} {m.split('_')[-1]}"
                    curves.append(hv.Curve(rows, "t", (m, ylabel), label=label).opts(line_dash="solid" if i == 0 else "dashed"))
            if metrics == ("g2g_p95_ms",) and "slo_g2g_ms" in self.server and len(data):
                t = sorted(set(data["t"]))  # a curve, not an HLine: the y range then always shows the SLO
                curves.append(hv.Curve((t, [self.server["slo_g2g_ms"]] * len(t)), "t", (metrics[0], ylabel),
                                       label="SLO").opts(color="red", line_dash="dotted"))
            return hv.Overlay(curves or [hv.Curve([], "t", (metrics[0], ylabel))]).opts(
                title=title, xlabel="seconds", ylim=(0, None), responsive=True, height=240,
                legend_position="top_left")

        return hv.DynamicMap(draw, streams=[self.buffer])

    def panel(self):
        """The dashboard as a Panel layout that polls while it is shown (in a notebook or a served page)."""
        import holoviews as hv
        import panel as pn

        hv.renderer("bokeh")  # the bokeh backend, without hv.extension's notebook output (pn.extension loads the JS)
        status = pn.pane.Markdown(self.summary(), sizing_mode="stretch_width")

        def tick():
            self.poll()
            status.object = self.summary()

        tick()
        plots = [pn.pane.HoloViews(self.plot(*spec), sizing_mode="stretch_width") for spec in PLOTS]
        layout = pn.Column(pn.pane.Markdown("## worldlab serve: live rooms"), status,
                           pn.GridBox(*plots, ncols=2, sizing_mode="stretch_width"), sizing_mode="stretch_width")
        layout.poller = pn.state.add_periodic_callback(tick, period=int(self.period_s * 1000))
        return layout
