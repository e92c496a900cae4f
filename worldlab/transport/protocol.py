"""The `ctl` data-channel protocol (DESIGN.md): JSON objects with v=1, seq, type; validated here.

A bad message raises ProtocolError(code, message); the peer replies with an `error` and keeps going.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from worldlab import env

VERSION = 1
MAX_MESSAGE_BYTES = 4096
CLIENT_TYPES = ("action", "prompt", "ping", "quality")
QUALITY = ("auto", "low", "high")


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Message:
    type: str
    seq: int
    body: dict


def parse(raw) -> Message:
    """Validate one client message (str or bytes) -> Message, or raise ProtocolError."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", "message must be a JSON object")
    if msg.get("v") != VERSION:
        raise ProtocolError("bad_version", f"field 'v' must be {VERSION}, got {msg.get('v')!r}")
    seq, kind = msg.get("seq"), msg.get("type")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("bad_field", f"field 'seq' must be a non-negative integer, got {seq!r}")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected one of {CLIENT_TYPES}")
    return Message(kind, seq, _check_body(kind, msg))


def _number(msg: dict, field: str) -> float:
    v = msg.get(field)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ProtocolError("bad_field", f"field {field!r} must be a number, got {v!r}")
    return float(v)


def _check_body(kind: str, msg: dict) -> dict:
    if kind == "action":
        keys = msg.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) > 4:
            raise ProtocolError("bad_field", "field 'keys' must be a list of up to 4 key names")
        try:
            env.normalize_keys(keys)
        except ValueError as exc:
            raise ProtocolError("bad_field", str(exc)) from None
        return {"keys": keys, "t": _number(msg, "t") if "t" in msg else None}
    if kind == "prompt":
        text = msg.get("text")
        if not isinstance(text, str):
            raise ProtocolError("bad_field", f"field 'text' must be a string, got {type(text).__name__}")
        try:
            env.check_prompt(text)
        except ValueError as exc:
            raise ProtocolError("bad_prompt", str(exc)) from None
        return {"text": text}
    if kind == "ping":
        return {"t": _number(msg, "t")}
    preset = msg.get("preset")
    if preset not in QUALITY:
        raise ProtocolError("bad_field", f"field 'preset' must be one of {QUALITY}, got {preset!r}")
    return {"preset": preset}


def encode(kind: str, **fields) -> str:
    return json.dumps({"v": VERSION, "type": kind, **fields}, separators=(",", ":"))
