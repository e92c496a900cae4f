"""The `ctl` data-channel protocol (DESIGN.md): JSON objects with v=1, seq, type; validated here.

A bad message raises ProtocolError(code, message); the peer replies with an `error` and keeps going.
Server -> client messages that end a session (docs/streaming.md, "Cost controls and drain"):
`{type:"drain", deadline_s, message}` (the server is restarting: the session ends within deadline_s);
`{type:"error", code:"drained"}` at that deadline; `{type:"error", code:"frame_cap", retry_after_s}` when
the room's or tenant's frame budget is used up. The room closes fault_grace_s after either error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from worldlab.engine.session import normalize_keys
from worldlab.config import SessionConfig
from worldlab.security import safety

VERSION = 1
CLIENT_TYPES = ("action", "prompt", "ping", "quality", "report")
# A spectator may measure its RTT and report what its page measured; it cannot steer the world or change
# the stream.
VIEWER_TYPES = ("ping", "report")
QUALITY = ("auto", "low", "high")  # auto, or pin the bottom / top rung of the ladder (worldlab.transport.quality)
# What a page may report of its own measurements (`report`): each optional, a finite number >= 0 or null.
REPORT_FIELDS = ("fps_actual", "g2g_ms", "g2g_ms_p95", "rtt_ms", "capture_ms", "decode_ms", "interval_ms_p95",
                 "frames", "new_frames", "dropped_frames", "first_frame_ms", "av_offset_ms_p95",
                 "av_path_ms")
_ENVELOPE = ("v", "seq", "type")


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Message:
    type: str
    seq: int
    body: dict


# A JSON string (terminated or not: an unterminated one runs to the end, which keeps the scan linear) or
# a bracket. In valid JSON every quote outside a string opens one, so brackets in strings are skipped.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


class JSONTooDeep(ValueError):
    pass


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in JSON text, ignoring brackets inside strings (no recursion)."""
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        tok = m.group()
        if tok == "[" or tok == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif tok == "]" or tok == "}":
            depth -= 1
    return deepest


def loads(raw, max_depth: int):
    """json.loads that raises nothing but ValueError: bad UTF-8, bad JSON, and nesting deeper than
    `max_depth` (JSONTooDeep, checked before parsing, so a "[[[[..." bomb never reaches the recursive
    decoder; RecursionError or any other decoder failure is turned into ValueError as well)."""
    try:
        text = bytes(raw).decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        if not isinstance(text, str):
            raise ValueError(f"expected JSON text, got {type(raw).__name__}")
        if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
            raise JSONTooDeep(f"JSON nests deeper than {max_depth} levels")
        return json.loads(text)
    except ValueError:
        raise
    except Exception as exc:  # RecursionError, MemoryError, ...: still just bad input
        raise ValueError(f"JSON could not be decoded ({type(exc).__name__})") from None


def parse(raw, *, viewer: bool = False, cfg: SessionConfig | None = None) -> Message:
    """Validate one client message (str or bytes) -> Message, or raise ProtocolError (never anything else).

    viewer=True: the sender is a spectator; anything but VIEWER_TYPES is refused with `forbidden`.
    cfg: the session's config, whose max_message_bytes and max_json_depth apply (None: SessionConfig's)."""
    msg = _decode(raw, cfg or SessionConfig())
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", "message must be a JSON object")
    if msg.get("v") != VERSION:
        raise ProtocolError("bad_version", f"field 'v' must be {VERSION}, got {msg.get('v')!r}")
    seq, kind = msg.get("seq"), msg.get("type")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("bad_field", f"field 'seq' must be a non-negative integer, got {seq!r}")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected one of {CLIENT_TYPES}")
    if viewer and kind not in VIEWER_TYPES:
        raise ProtocolError("forbidden", f"spectators cannot send {kind!r}: they cannot steer the world "
                                         "or change its stream")
    return Message(kind, seq, _check_body(kind, msg))


def _decode(raw, cfg: SessionConfig):
    """The JSON value of a message within the size and depth limits of `cfg`, or ProtocolError."""
    if not isinstance(raw, (str, bytes, bytearray, memoryview)):
        raise ProtocolError("bad_message", f"message must be text or bytes, got {type(raw).__name__}")
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > cfg.max_message_bytes:
        raise ProtocolError("too_large", f"message is {size} bytes; the limit is {cfg.max_message_bytes}")
    try:
        return loads(raw, cfg.max_json_depth)
    except JSONTooDeep as exc:
        raise ProtocolError("bad_json", f"message is not accepted: {exc}") from None
    except ValueError:
        raise ProtocolError("bad_json", "message is not valid JSON") from None


def _number(msg: dict, field: str) -> float:
    v = msg.get(field)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ProtocolError("bad_field", f"field {field!r} must be a number, got {v!r}")
    try:
        return float(v)
    except OverflowError:  # an integer literal of hundreds of digits
        raise ProtocolError("bad_field", f"field {field!r} is out of range") from None


def _check_report(msg: dict) -> dict:
    unknown = [k for k in msg if k not in _ENVELOPE and k not in REPORT_FIELDS]
    if unknown:
        raise ProtocolError("bad_field", f"field {unknown[0]!r} is not accepted in a report; "
                                         f"expected some of {REPORT_FIELDS}")
    body = {}
    for k in REPORT_FIELDS:
        if k not in msg:
            continue
        if msg[k] is None:
            body[k] = None
            continue
        v = _number(msg, k)
        if not math.isfinite(v) or v < 0:
            raise ProtocolError("bad_field", f"field {k!r} must be a finite number >= 0 or null, got {msg[k]!r}")
        body[k] = v
    return body


def _check_body(kind: str, msg: dict) -> dict:
    if kind == "action":
        keys = msg.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) > 4:
            raise ProtocolError("bad_field", "field 'keys' must be a list of up to 4 key names")
        try:
            normalize_keys(keys)
        except ValueError as exc:
            raise ProtocolError("bad_field", str(exc)) from None
        return {"keys": keys, "t": _number(msg, "t") if "t" in msg else None}
    if kind == "prompt":
        text = msg.get("text")
        if not isinstance(text, str):
            raise ProtocolError("bad_field", f"field 'text' must be a string, got {type(text).__name__}")
        try:
            safety.screen_prompt(text)
        except safety.PromptRefused as exc:
            raise ProtocolError("prompt_refused", str(exc)) from None
        except ValueError as exc:
            raise ProtocolError("bad_prompt", str(exc)) from None
        return {"text": text}
    if kind == "ping":
        return {"t": _number(msg, "t")}
    if kind == "report":
        return _check_report(msg)
    preset = msg.get("preset")
    if preset not in QUALITY:
        raise ProtocolError("bad_field", f"field 'preset' must be one of {QUALITY}, got {preset!r}")
    return {"preset": preset}


def encode(kind: str, **fields) -> str:
    return json.dumps({"v": VERSION, "type": kind, **fields}, separators=(",", ":"))
