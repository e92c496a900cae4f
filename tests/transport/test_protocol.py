"""protocol.parse across every client message type and every error code; it raises nothing but
ProtocolError, whatever the input (deep nesting included: issue 12, defect 1)."""

import json
import random
import time

import pytest

from worldlab import env
from worldlab.config import SessionConfig
from worldlab.transport import protocol
from worldlab.transport.protocol import ProtocolError


def msg(**fields):
    return json.dumps({"v": 1, "seq": 7, **fields})


def code_of(raw, **kw):
    with pytest.raises(ProtocolError) as info:
        protocol.parse(raw, **kw)
    return info.value.code


@pytest.mark.parametrize("raw, kind, body", [
    (msg(type="action", keys=["right", "up"], t=1.5), "action", {"keys": ["right", "up"], "t": 1.5}),
    (msg(type="action", keys=[]), "action", {"keys": [], "t": None}),
    (msg(type="prompt", text="a snowy night"), "prompt", {"text": "a snowy night"}),
    (msg(type="prompt", text="brackets [[[[[[[[[[[[[[[[[[[[ {{{{{{{{{{{{ in text"), "prompt",
     {"text": "brackets [[[[[[[[[[[[[[[[[[[[ {{{{{{{{{{{{ in text"}),
    (msg(type="ping", t=123.5), "ping", {"t": 123.5}),
    (msg(type="quality", preset="auto"), "quality", {"preset": "auto"}),
    (msg(type="quality", preset="low"), "quality", {"preset": "low"}),
    (msg(type="quality", preset="high"), "quality", {"preset": "high"}),
    (msg(type="ping", t=0).encode(), "ping", {"t": 0.0}),  # binary messages are JSON too
])
def test_every_message_type_parses(raw, kind, body):
    m = protocol.parse(raw)
    assert (m.type, m.seq, m.body) == (kind, 7, body)


@pytest.mark.parametrize("raw, code", [
    ("x" * (SessionConfig.max_message_bytes + 1), "too_large"),
    ("é" * (SessionConfig.max_message_bytes // 2 + 1), "too_large"),  # counted in UTF-8 bytes, not characters
    ("{not json", "bad_json"),
    (b"\xff\xfe{}", "bad_json"),  # not UTF-8
    ("", "bad_json"),
    ("[" * 1100, "bad_json"),  # the probe's 1.1 KB message: RecursionError in json.loads today
    ("[" * 4000 + "]" * 4000, "too_large"),
    ("[" * 2000 + "]" * 2000, "bad_json"),  # valid JSON, 2000 deep: refused before decoding
    ('{"v":1,"seq":1,"type":"ping","t":1,"x":' + "[" * 20 + "]" * 20 + "}", "bad_json"),
    ("[1, 2]", "bad_message"),
    ('"just a string"', "bad_message"),
    ("42", "bad_message"),
    ("null", "bad_message"),
    (json.dumps({"seq": 1, "type": "ping", "t": 0}), "bad_version"),
    (json.dumps({"v": 2, "seq": 1, "type": "ping", "t": 0}), "bad_version"),
    (json.dumps({"v": "1", "seq": 1, "type": "ping", "t": 0}), "bad_version"),
    (json.dumps({"v": 1, "type": "ping", "t": 0}), "bad_field"),
    (json.dumps({"v": 1, "seq": -1, "type": "ping", "t": 0}), "bad_field"),
    (json.dumps({"v": 1, "seq": True, "type": "ping", "t": 0}), "bad_field"),
    (json.dumps({"v": 1, "seq": 1.5, "type": "ping", "t": 0}), "bad_field"),
    (msg(type="teleport"), "unknown_type"),
    (msg(), "unknown_type"),
    (msg(type="action", keys="right"), "bad_field"),
    (msg(type="action", keys=["jump"]), "bad_field"),
    (msg(type="action", keys=["up"] * 5), "bad_field"),
    (msg(type="action", keys=[1]), "bad_field"),
    (msg(type="action", keys=["up"], t="now"), "bad_field"),
    (msg(type="prompt", text=42), "bad_field"),
    (msg(type="prompt"), "bad_field"),
    (msg(type="prompt", text="   "), "bad_prompt"),
    (msg(type="prompt", text="x" * (env.MAX_PROMPT_CHARS + 1)), "bad_prompt"),
    (msg(type="ping"), "bad_field"),
    (msg(type="ping", t=True), "bad_field"),
    (msg(type="quality", preset="ultra"), "bad_field"),
    (msg(type="quality"), "bad_field"),
])
def test_every_error_code(raw, code):
    assert code_of(raw) == code


def test_non_text_input_is_bad_message():
    assert code_of(None) == "bad_message"
    assert code_of(12) == "bad_message"


@pytest.mark.parametrize("raw, code", [
    (msg(type="action", keys=["right"]), "forbidden"),
    (msg(type="prompt", text="a snowy night"), "forbidden"),
    (msg(type="quality", preset="low"), "forbidden"),  # defect 5: a spectator switched the player's rung
    (msg(type="teleport"), "unknown_type"),  # validation still says what is wrong first
    ("{not json", "bad_json"),
])
def test_spectators_may_only_ping(raw, code):
    assert code_of(raw, viewer=True) == code
    assert protocol.parse(msg(type="ping", t=1), viewer=True).type == "ping"


REPORT = {"fps_actual": 29.9, "g2g_ms": 61.5, "g2g_ms_p95": 80, "rtt_ms": 1.2, "capture_ms": 0.4,
          "decode_ms": 2.0, "interval_ms_p95": 33.4, "frames": 300, "new_frames": 290, "dropped_frames": 0,
          "first_frame_ms": 412.0, "av_offset_ms_p95": 21.0,
          "av_path_ms": 88.0}


def test_report_parses_every_field_and_nulls():
    assert set(REPORT) == set(protocol.REPORT_FIELDS)
    m = protocol.parse(msg(type="report", **REPORT))
    assert (m.type, m.seq) == ("report", 7)
    assert m.body == {k: float(v) for k, v in REPORT.items()}
    assert protocol.parse(msg(type="report", g2g_ms=None, frames=0)).body == {"g2g_ms": None, "frames": 0.0}
    assert protocol.parse(msg(type="report")).body == {}  # every field is optional


@pytest.mark.parametrize("fields", [
    {"g2g_ms": -1}, {"rtt_ms": -0.001}, {"fps_actual": "30"}, {"frames": True}, {"decode_ms": [1]},
    {"decode_ms": {"p50": 1}}, {"g2g_ms": 10, "wat": 1}, {"fps_target": 30}, {"server": {}},
    {"frames": int("9" * 400)},  # overflows a float
])
def test_bad_reports_are_refused(fields):
    assert code_of(msg(type="report", **fields)) == "bad_field"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_report_refuses_non_finite_numbers(literal):
    raw = '{"v":1,"seq":1,"type":"report","g2g_ms":%s}' % literal
    with pytest.raises(ProtocolError, match="g2g_ms") as info:
        protocol.parse(raw)
    assert info.value.code == "bad_field"


def test_report_names_the_unknown_field():
    with pytest.raises(ProtocolError, match="'width'"):
        protocol.parse(msg(type="report", g2g_ms=1, width=256))


def test_spectators_may_report():
    assert protocol.parse(msg(type="report", **REPORT), viewer=True).body["g2g_ms"] == 61.5
    assert code_of(msg(type="report", g2g_ms=-5), viewer=True) == "bad_field"


def test_huge_integer_timestamp_is_bad_field():
    assert code_of(msg(type="ping", t=int("9" * 400))) == "bad_field"


def test_limits_come_from_the_session_config():
    """Without a config, parse applies SessionConfig's defaults (the one place they are written)."""
    assert not hasattr(protocol, "MAX_MESSAGE_BYTES") and not hasattr(protocol, "MAX_JSON_DEPTH")
    depth = SessionConfig.max_json_depth
    ok = '{"v":1,"seq":1,"type":"ping","t":1,"x":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    assert protocol.parse(ok).type == "ping"  # exactly at the limit is fine
    assert code_of(ok.replace("[", "[[", 1).replace("]", "]]", 1)) == "bad_json"  # one deeper is not


def test_json_depth_is_linear_and_ignores_strings():
    assert protocol.json_depth('{"a": "[[[[{{{{", "b": [[1]]}') == 3
    assert protocol.json_depth('"\\"[[[[" [') == 1  # escaped quote stays inside the string
    t0 = time.perf_counter()
    assert protocol.json_depth('\\"' * 30_000 + "[[") == 0  # one unterminated string: no quadratic rescans
    assert time.perf_counter() - t0 < 0.5


def test_parse_raises_only_protocol_errors_on_garbage():
    rng = random.Random(12)
    alphabet = '[]{}",:\\ 0123456789.eE-+truefalsnul' + "vseqtypingactionkeys"
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))) for _ in range(2000)]
    samples += ['{"v":1,"seq":1,"type":"ping","t":' + "[" * n + "1" + "]" * n + "}" for n in range(0, 2040, 7)]
    samples += ["{" * n for n in (100, 1000, 2000, 4096)] + ['{"a":' * 900 + "1" + "}" * 900]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))) for _ in range(300)]
    for raw in samples:
        try:
            protocol.parse(raw)
        except ProtocolError as exc:
            assert exc.code in ("too_large", "bad_json", "bad_message", "bad_version", "bad_field",
                                "unknown_type", "bad_prompt")
