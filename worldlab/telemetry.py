"""What the live path reports as it runs (`Observer`, `Sent`) and its OpenTelemetry spans: one `frame` span per
sent frame with children queue, model, encode, send, and a per-session funnel under a `session` span.

Spans go to an OTLP/HTTP endpoint or, without one, as JSON lines to a file (SessionConfig.otel_endpoint /
otel_jsonl); with neither `tracer_provider` returns None, no FrameTracer is made and nothing is recorded.
"""

from __future__ import annotations

import json
import logging
import pathlib
import threading
import time
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from worldlab.engine.metrics import METRICS
from worldlab.engine.slot import FrameMeta

log = logging.getLogger(__name__)
STAGES = ("queue", "model", "encode", "send")
ROOM_METRICS = tuple(m for m in METRICS if m not in ("queue_ms", "model_ms", "encode_ms"))
# Funnel span -> the ctl message type that opens it (first_frame opens at the offer).
FUNNEL = {"first_prompt": "prompt", "first_key": "action"}


@dataclass(frozen=True)
class Sent:
    """One new model frame as the track sent it; stamps are time.monotonic() seconds."""

    meta: FrameMeta
    taken: float  # taken from the latest-frame slot
    encode_start: float
    encode_end: float
    sent: float  # the packet handed to the RTP senders (and the `frame` ctl message sent)
    new_input: bool  # the first sent frame reflecting a newer input seq: its queue_ms is an input's wait

    def stages(self) -> dict:
        """Stage name -> (start, end). The queue ends where the model step starts (the tick's start)."""
        model_start = self.meta.produced_at - self.meta.model_ms / 1000
        return {"queue": (model_start - self.meta.queue_ms / 1000, model_start),
                "model": (model_start, self.meta.produced_at),
                "encode": (self.encode_start, self.encode_end),
                "send": (self.encode_end, self.sent)}


class Observer:
    """Hooks the transport calls on the event loop (PeerHub, RoomTrack); implementations override some."""

    def session_started(self, session, at: float) -> None: ...
    def session_input(self, session, kind: str, seq: int, at: float, body: dict) -> None: ...
    def frame(self, session, sent: Sent) -> None: ...
    def page_report(self, session, body: dict) -> None: ...
    def rtt(self, session, ms: float) -> None: ...
    def room_stats(self, session, stats: dict) -> None: ...
    def session_closed(self, session) -> None: ...


def notify(observers, hook: str, *args) -> None:
    """Call `hook` on every observer; one that raises is logged, never allowed to stop the stream."""
    for o in observers:
        try:
            getattr(o, hook)(*args)
        except Exception:
            log.exception("telemetry observer %s.%s failed", type(o).__name__, hook)


# -- exporters -------------------------------------------------------------------------------------------
def span_record(span) -> dict:
    """A finished span as one flat JSON-able dict (ids in hex, times in ns since the epoch)."""
    ctx, parent = span.context, span.parent
    return {"name": span.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
            "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
            "start_ns": span.start_time, "end_ns": span.end_time,
            "duration_ms": (span.end_time - span.start_time) / 1e6, "attributes": dict(span.attributes or {}),
            "events": [{"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
                       for e in span.events]}


class JsonLinesExporter(SpanExporter):
    """Appends each finished span as one JSON line (span_record) to a file; opened at once so that a bad path
    fails at start-up."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot write spans to {self.path}: {exc.strerror or exc}") from None
        self._lock = threading.Lock()

    def export(self, spans) -> SpanExportResult:
        text = "".join(json.dumps(span_record(s), separators=(",", ":")) + "\n" for s in spans)
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(text)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def tracer_provider(cfg) -> TracerProvider | None:
    """A provider exporting to cfg.otel_endpoint (OTLP/HTTP protobuf) or else cfg.otel_jsonl; None for neither.
    Spans leave in batches on the SDK's worker thread, never on the event loop."""
    if cfg.otel_endpoint:
        if not cfg.otel_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"otel_endpoint must be an http(s) URL, got {cfg.otel_endpoint!r}")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=cfg.otel_endpoint)
    elif cfg.otel_jsonl:
        exporter = JsonLinesExporter(cfg.otel_jsonl)
    else:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": "worldlab"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


# -- spans -----------------------------------------------------------------------------------------------
@dataclass
class _Funnel:
    span: object  # the session's root span, ended when the room closes
    open: dict = field(default_factory=dict)  # funnel name -> (opened at, seq that closes it)
    seen: set = field(default_factory=set)


class FrameTracer(Observer):
    """Spans from the transport's hooks. A `frame` span covers queue start -> send end; its attributes are the
    frame's own stage times (queue_ms 0 unless `input`: the frame applied a newer input), send_ms, slot_ms (made
    -> taken by the track) and the room's latest rest of the metric dictionary (stats, page report, RTCP rtt)."""

    def __init__(self, provider: TracerProvider):
        self.provider = provider
        self.tracer = provider.get_tracer("worldlab")
        self._epoch_ns = time.time_ns() - time.monotonic_ns()  # span times are epoch ns; ours are monotonic
        self._funnels: dict[str, _Funnel] = {}
        self._metrics: dict[str, dict] = {}  # session id -> latest metric dictionary values

    def _ns(self, t: float) -> int:
        return self._epoch_ns + int(t * 1e9)

    def session_started(self, session, at: float) -> None:
        span = self.tracer.start_span("session", start_time=self._ns(at),
                                      attributes={"room": session.room, "session": session.id})
        self._funnels[session.id] = _Funnel(span, {"first_frame": (at, -1)}, {"first_frame"})

    def session_input(self, session, kind: str, seq: int, at: float, body: dict) -> None:
        f = self._funnels.get(session.id)
        name = next((n for n, k in FUNNEL.items() if k == kind), None)
        if f is None or name is None or name in f.seen or (kind == "action" and not body.get("keys")):
            return
        f.seen.add(name)
        f.open[name] = (at, seq)

    def frame(self, session, sent: Sent) -> None:
        self._frame_span(session, sent)
        f = self._funnels.get(session.id)
        for name, (at, seq) in list(f.open.items()) if f is not None else ():
            if sent.meta.seq >= seq:
                del f.open[name]
                self._funnel_span(f, name, at, seq, sent)

    def _frame_span(self, session, sent: Sent) -> None:
        meta, stages = sent.meta, sent.stages()
        attrs = {**self._metrics.get(session.id, {}), "room": session.room, "session": session.id,
                 "frame_id": meta.frame_id, "seq": meta.seq, "input": sent.new_input, "queue_ms": meta.queue_ms,
                 "model_ms": meta.model_ms, "encode_ms": (sent.encode_end - sent.encode_start) * 1000,
                 "send_ms": (sent.sent - sent.encode_end) * 1000, "slot_ms": (sent.taken - meta.produced_at) * 1000}
        span = self.tracer.start_span("frame", start_time=self._ns(stages["queue"][0]), attributes=attrs)
        ctx = trace.set_span_in_context(span)
        for name, (start, end) in stages.items():
            self.tracer.start_span(name, context=ctx, start_time=self._ns(start)).end(end_time=self._ns(end))
        span.end(end_time=self._ns(sent.sent))

    def _funnel_span(self, f: _Funnel, name: str, at: float, seq: int, sent: Sent) -> None:
        attrs = {"seq": seq, "frame_id": sent.meta.frame_id, "ms": (sent.sent - at) * 1000}
        span = self.tracer.start_span(f"funnel.{name}", context=trace.set_span_in_context(f.span),
                                      start_time=self._ns(at), attributes=attrs)
        span.end(end_time=self._ns(sent.sent))

    def _update(self, session, values: dict) -> None:
        """The room-level part of the metric dictionary; a frame's own stage times come from the frame."""
        got = self._metrics.setdefault(session.id, {})
        got.update({k: float(v) for k, v in values.items() if k in ROOM_METRICS and v is not None})

    def room_stats(self, session, stats: dict) -> None:
        self._update(session, stats)

    def page_report(self, session, body: dict) -> None:
        self._update(session, {k: body.get(k) for k in ("capture_ms", "decode_ms", "g2g_ms")})

    def rtt(self, session, ms: float) -> None:
        self._update(session, {"rtt_ms": ms})

    def session_closed(self, session) -> None:
        self._metrics.pop(session.id, None)
        f = self._funnels.pop(session.id, None)
        if f is not None:
            f.span.set_attribute("funnel_open", sorted(f.open))  # opened but never reached a frame
            f.span.end()

    def shutdown(self) -> None:
        """Export what is buffered and stop (the app's shutdown)."""
        self.provider.shutdown()
