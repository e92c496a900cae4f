"""OpenTelemetry spans: `worldlab serve`'s app (oracle) with otel_jsonl, an aiortc client through POST /offer,
a key press and a prompt; the JSON-lines file holds one `frame` span per sent frame with its four stage
children, and the session funnel. The funnel logic on hand-made events; the OTLP exporter against a local
collector; the serve flags; and no tracer at all by default."""

import asyncio
import json
import types

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.browser_support import free_port
from worldlab import telemetry
from worldlab.cli import build_parser
from worldlab.commands.serve_cmd import check_args
from worldlab.config import SessionConfig
from worldlab.engine.oracle import EnvOracle
from worldlab.engine.slot import FrameMeta
from worldlab.server import build_app
from worldlab.server.app import HUB

pytestmark = pytest.mark.timeout(120)


def acked(client, seq: int):
    return next((m["frame_id"] for m in client.msgs if m["type"] == "ack" and m["seq"] == seq), None)


async def play(app, frames_after: int = 15) -> tuple[dict, dict, int]:
    """Connect, press a key, switch the prompt, hang up: (answer, {seq: acked frame_id}, frames sent)."""
    from worldlab.transport.client import PeerClient

    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        client = PeerClient(keep_frames=False)
        try:
            ans = await client.connect_http(http.session, str(http.make_url("/offer")), prompt="a sunny desert")
            slot = app[HUB].rooms[ans["room"]].session.slot
            await client.wait_for(lambda: client.n_frames >= 10)
            await asyncio.sleep(1.2)  # the stats loop has run: frames carry the room's metric dictionary
            key = client.send(type="action", keys=["right"], t=0)
            await client.wait_for(lambda: acked(client, key) is not None)  # a tick acks only its newest seq
            prompt = client.send(type="prompt", text="a snowy tundra")
            await client.wait_for(lambda: acked(client, prompt) is not None)
            await client.wait_for(lambda: client.n_frames >= 10 + frames_after)
            acks = {key: acked(client, key), prompt: acked(client, prompt)}
            sent = slot.consumed
        finally:
            await client.close()
    return ans, acks, sent  # the TestClient's exit ran the app's shutdown: spans flushed


def read_spans(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


async def test_frame_spans_and_funnel_in_the_jsonl_file(tmp_path):
    path = tmp_path / "spans.jsonl"
    app = build_app(EnvOracle(seed=4), config=SessionConfig(otel_jsonl=str(path)))
    ans, acks, sent = await play(app)
    spans = read_spans(path)
    by_id = {s["span_id"]: s for s in spans}
    frames = [s for s in spans if s["name"] == "frame"]
    assert sent - 1 <= len(frames) <= sent and len(frames) >= 25  # one per new frame sent
    ids = [f["attributes"]["frame_id"] for f in frames]
    assert ids == sorted(set(ids))  # each frame once, in order

    children: dict[str, list] = {}
    for s in spans:
        if s["name"] in telemetry.STAGES:
            children.setdefault(s["parent_id"], []).append(s)
    for f in frames:
        a = f["attributes"]
        assert f["parent_id"] is None and a["room"] == ans["room"] and a["session"] == ans["session"]
        kids = {k["name"]: k for k in children[f["span_id"]]}
        assert sorted(kids) == sorted(telemetry.STAGES) and len(children[f["span_id"]]) == 4
        assert all(k["trace_id"] == f["trace_id"] for k in kids.values())
        assert all(f["start_ns"] <= k["start_ns"] <= k["end_ns"] <= f["end_ns"] for k in kids.values())
        assert kids["model"]["end_ns"] <= kids["encode"]["start_ns"] <= kids["send"]["start_ns"]
        assert kids["model"]["duration_ms"] == pytest.approx(a["model_ms"], abs=1e-3)
        assert kids["encode"]["duration_ms"] == pytest.approx(a["encode_ms"], abs=1e-3)
    late = [f["attributes"] for f in frames[-5:]]
    assert all(a["fps_target"] == 30.0 and "drop_pct" in a and "kv_bytes" in a for a in late)

    key, prompt = sorted(acks)
    applied = [f for f in frames if f["attributes"]["input"]]
    assert len(applied) == 2 and applied[0]["attributes"]["seq"] == key and applied[1]["attributes"]["seq"] == prompt
    assert all(f["attributes"]["queue_ms"] == 0.0 for f in frames if not f["attributes"]["input"])
    assert {k["name"]: k for k in children[applied[0]["span_id"]]}["queue"]["duration_ms"] == pytest.approx(
        applied[0]["attributes"]["queue_ms"], abs=1e-3)

    session = [s for s in spans if s["name"] == "session"]
    assert len(session) == 1 and session[0]["attributes"]["room"] == ans["room"]
    funnel = {s["name"]: s for s in spans if s["name"].startswith("funnel.")}
    assert sorted(funnel) == ["funnel.first_frame", "funnel.first_key", "funnel.first_prompt"]
    assert all(s["parent_id"] == session[0]["span_id"] for s in funnel.values())
    assert funnel["funnel.first_frame"]["start_ns"] == session[0]["start_ns"]  # opened at the offer
    assert funnel["funnel.first_frame"]["attributes"]["frame_id"] == ids[0]
    for name, seq in (("funnel.first_key", key), ("funnel.first_prompt", prompt)):
        a = funnel[name]["attributes"]
        # the first frame sent that reflects the input: the acked frame, or a later one if the slot dropped it
        assert a["seq"] == seq and acks[seq] <= a["frame_id"] <= acks[seq] + 2, (name, a, acks)
        assert a["ms"] == pytest.approx(funnel[name]["duration_ms"], abs=1e-3) and a["ms"] > 0
        assert by_id[funnel[name]["parent_id"]]["name"] == "session"


class FakeSession(types.SimpleNamespace):
    pass


def sent(frame_id: int, seq: int, at: float, new_input: bool = False) -> telemetry.Sent:
    meta = FrameMeta(frame_id, seq, at, model_ms=4.0, queue_ms=3.0 if new_input else 0.0)
    return telemetry.Sent(meta, at + 0.001, at + 0.002, at + 0.005, at + 0.006, new_input)


def test_funnel_closes_on_the_first_frame_reflecting_each_first_input(tmp_path):
    path = tmp_path / "spans.jsonl"
    tracer = telemetry.FrameTracer(telemetry.tracer_provider(SessionConfig(otel_jsonl=str(path))))
    s = FakeSession(id="s1", room="r1")
    tracer.session_started(s, 100.0)
    tracer.frame(s, sent(0, -1, 100.5))
    tracer.session_input(s, "action", 3, 101.0, {"keys": []})  # releasing keys is not a key press
    tracer.session_input(s, "action", 4, 101.1, {"keys": ["up"]})
    tracer.session_input(s, "action", 5, 101.2, {"keys": ["left"]})  # not the first: no new funnel
    tracer.session_input(s, "prompt", 6, 101.3, {"text": "x"})
    tracer.frame(s, sent(1, 3, 101.4, new_input=True))  # reflects seq 3 only
    tracer.frame(s, sent(2, 5, 101.5, new_input=True))  # reflects the key (seq 4), not the prompt (6)
    tracer.room_stats(s, {"fps_actual": 29.5, "rung": "high", "kv_bytes": None, "model_ms": 99.0})
    tracer.rtt(s, 1.25)
    tracer.frame(s, sent(3, 6, 101.6, new_input=True))
    tracer.session_closed(s)
    tracer.shutdown()
    spans = {sp["name"]: sp for sp in read_spans(path)}
    f = {n: spans[f"funnel.{n}"]["attributes"] for n in ("first_frame", "first_key", "first_prompt")}
    assert (f["first_frame"]["frame_id"], f["first_key"]["frame_id"], f["first_prompt"]["frame_id"]) == (0, 2, 3)
    assert f["first_key"]["seq"] == 4 and f["first_key"]["ms"] == pytest.approx((101.506 - 101.1) * 1000, abs=1e-3)
    assert f["first_frame"]["ms"] == pytest.approx(506.0, abs=1e-3)
    last = [sp for sp in read_spans(path) if sp["name"] == "frame"][-1]["attributes"]
    assert last["fps_actual"] == 29.5 and last["rtt_ms"] == 1.25 and "rung" not in last and "kv_bytes" not in last
    assert last["model_ms"] == 4.0  # the frame's own, never the room's p50
    assert last["queue_ms"] == 3.0 and last["input"] is True and last["frame_id"] == 3


async def test_spans_reach_an_otlp_http_endpoint():
    got: list[ExportTraceServiceRequest] = []

    async def traces(request):
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        got.append(req)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    port = free_port()
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        cfg = SessionConfig(otel_endpoint=f"http://127.0.0.1:{port}/v1/traces", otel_jsonl="/nonexistent/x")
        tracer = telemetry.FrameTracer(telemetry.tracer_provider(cfg))  # the endpoint wins over the file
        s = FakeSession(id="s1", room="r1")
        tracer.frame(s, sent(7, -1, 50.0))
        await asyncio.get_running_loop().run_in_executor(None, tracer.shutdown)
    finally:
        await runner.cleanup()
    spans = [sp for req in got for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    assert sorted(sp.name for sp in spans) == sorted(["frame", *telemetry.STAGES])
    frame = next(sp for sp in spans if sp.name == "frame")
    assert all(sp.parent_span_id == frame.span_id for sp in spans if sp is not frame)
    attrs = {a.key: a.value for a in frame.attributes}
    assert attrs["frame_id"].int_value == 7 and attrs["model_ms"].double_value == 4.0


def test_serve_flags_and_default_off(tmp_path):
    parse = build_parser().parse_args
    cfg = check_args(parse(["serve", "--otel-jsonl", str(tmp_path / "s.jsonl")]))
    assert cfg.otel_jsonl == str(tmp_path / "s.jsonl") and cfg.otel_endpoint == ""
    assert check_args(parse(["serve", "--otel-endpoint", "http://h:4318/v1/traces"])).otel_endpoint.endswith("/traces")
    assert telemetry.tracer_provider(SessionConfig()) is None  # default: no tracer, nothing per frame
    app = build_app(EnvOracle())
    assert not any(isinstance(o, telemetry.FrameTracer) for o in app[HUB].observers)
    with pytest.raises(ValueError, match="otel_endpoint must be an http"):
        telemetry.tracer_provider(SessionConfig(otel_endpoint="localhost:4318"))
    with pytest.raises(ValueError, match="cannot write spans to"):
        telemetry.tracer_provider(SessionConfig(otel_jsonl=str(tmp_path / "no" / "such" / "dir.jsonl")))
