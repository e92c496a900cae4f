"""The `ctl` protocol applied to a room: one handler for the WebRTC data channel, the WebSocket fallback and
the widget's comm — parse, rate-limit, record for triage, then steer the session (keys, prompt, quality).
"""

from __future__ import annotations

import logging
import time

from worldlab.config import SessionConfig
from worldlab.security import safety
from worldlab.security.ratelimit import TokenBucket
from worldlab.telemetry import notify
from worldlab.transport import protocol

log = logging.getLogger(__name__)


def send(channel, text: str) -> None:
    """To a ctl channel if it is still open (a closing one is skipped, never raised on)."""
    if channel.readyState == "open":
        channel.send(text)


class Ctl:
    def __init__(self, cfg: SessionConfig, observers=(), on_flag=None):
        """observers: worldlab.telemetry.Observer-s told of inputs and page reports; on_flag: callback(room,
        reason) when a message gets the room flagged for review (a refused prompt, a flood): seals its triage."""
        self.cfg, self.observers = cfg, tuple(observers)
        self.on_flag = on_flag or (lambda room, reason: None)
        self._limits = {kind: TokenBucket(rate, burst) for kind, rate, burst in cfg.ctl_rate_limits}

    def receive(self, room, channel, raw, viewer: bool) -> None:
        """One text message from a channel of `room`. Never raises: it runs inside aiortc's SCTP receive loop,
        where an escaping exception stops the peer's stream; a failure is logged and answered `internal`."""
        try:
            self._receive(room, channel, raw, viewer)
        except Exception:
            log.exception("ctl message in room %s failed", room.id)
            try:
                send(channel, protocol.encode("error", code="internal", message="the message could not be handled"))
            except Exception:
                pass

    def _receive(self, room, channel, raw, viewer: bool) -> None:
        try:
            msg = protocol.parse(raw, viewer=viewer, cfg=self.cfg)
        except protocol.ProtocolError as exc:
            if exc.code == "prompt_refused":
                safety.REVIEW.flag(room.session.id, "prompt", str(exc))
                room.record_input({"type": "prompt_refused", "detail": str(exc)})
                self.on_flag(room, f"flag: {exc}")
            send(channel, protocol.encode("error", code=exc.code, message=str(exc)))
            return
        if not self._limits[msg.type].allow(id(channel)):
            self._rate_limited(room, channel, msg.type)
            return
        self.apply(room, msg, channel)

    def apply(self, room, msg: protocol.Message, channel=None) -> None:
        """A parsed message from `channel` (None: the widget's comm, which has no reply path or page reports)."""
        s = room.session
        if msg.type in ("action", "prompt"):
            room.record_input({"type": msg.type, "seq": msg.seq, **msg.body})
            notify(self.observers, "session_input", s, msg.type, msg.seq, time.monotonic(), msg.body)
        if msg.type == "action":
            s.set_action(msg.body["keys"], msg.seq)
        elif msg.type == "prompt":
            s.set_prompt(msg.body["text"], msg.seq)
        elif msg.type == "ping" and channel is not None:
            send(channel, protocol.encode("pong", seq=msg.seq, t=msg.body["t"]))
        elif msg.type == "quality":
            room.quality = msg.body["preset"]
            room.track.set_rung(room.adapt.set_mode(room.quality).name)
        elif msg.type == "report" and channel in room.channels:  # not one racing a dropped peer: it would stay
            room.reports[channel] = (time.monotonic(), msg.body)
            if channel in room.player_channels:
                notify(self.observers, "page_report", s, msg.body)

    def _rate_limited(self, room, channel, kind: str) -> None:
        room.rate_drops += 1
        if room.rate_drops % self.cfg.rate_flag_every == 1:
            safety.REVIEW.flag(room.session.id, "rate", f"{kind} messages over the limit ({room.rate_drops} dropped)")
            self.on_flag(room, f"flag: {kind} rate")
        send(channel, protocol.encode("error", code="rate_limited", message=f"too many {kind} messages; slow down"))
