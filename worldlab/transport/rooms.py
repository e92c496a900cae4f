"""Rooms and their registry: one live session per room with its track, peers, ctl channels and page reports,
and the admission rules (unique ids, `max_sessions`, tenant and frame caps) that decide which rooms exist.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

from worldlab.config import SessionConfig
from worldlab.engine import Session
from worldlab.transport import ice, protocol, shedding
from worldlab.transport.caps import CapExceeded, CostControls

ROOM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class OfferError(ValueError):
    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.code, self.retry_after_s = status, code, retry_after_s


@dataclass
class Room:
    id: str
    session: Session
    track: object  # its RoomTrack (worldlab.transport.track)
    relay: object  # aiortc MediaRelay: the player and every spectator get the track's packets
    quality: str = "auto"
    pcs: set = field(default_factory=set)
    channels: set = field(default_factory=set)  # player + viewer ctl channels
    player_channels: set = field(default_factory=set)
    reports: dict = field(default_factory=dict)  # ctl channel -> (time.monotonic(), its page's last `report`)
    viewers: int = 0
    scheduler: object = None  # the Scheduler (model worker) stepping this room's session
    persistent: bool = False  # widget rooms outlive their views; served rooms end with their player
    tenant: str | None = None  # the access-token tenant that created the room (None: no auth)
    triage: object = None  # its TriageBuffer (worldlab.security.ringbuffer), when the hub keeps them
    on_players_gone: object = None  # called when a persistent room's last steering peer is gone
    watermark_id: int | None = None  # the 64-bit id hidden in this room's frames (None: no watermark)
    adapt: object = None  # its QualityController (worldlab.transport.quality)
    rate_drops: int = 0  # data-channel messages dropped by the rate limits
    audio: object = None  # its RoomAudioTrack (worldlab.transport.audio); None with SessionConfig.audio off
    socket: bool = False  # streamed over a WebSocket (worldlab.transport.websocket), not WebRTC
    codec: str = "vp8"  # its video codec (one of worldlab.config.CODECS; h264 for a WebSocket room)

    @property
    def model(self):
        """The WorldModel (variant) the room's session runs on: its scheduler's."""
        return self.scheduler.model

    def record_input(self, message: dict) -> None:
        """Into the room's triage buffer (if any), stamped with the frame it arrived at."""
        if self.triage is not None:
            self.triage.add_input({**message, "frame_id": self.session.frame_id})

    def forget_channel(self, channel) -> None:
        self.channels.discard(channel)
        self.player_channels.discard(channel)
        self.reports.pop(channel, None)

    def page_report(self, max_age_s: float = 3.0) -> dict | None:
        """What a player's page measured: the freshest `report` from the room's player channels that is at
        most `max_age_s` old, as every protocol.REPORT_FIELDS key (None where the page had no figure) plus
        `age_s`; None if there is none. Spectators' reports are kept but never returned here."""
        now, best = time.monotonic(), None
        for ch in list(self.player_channels):
            got = self.reports.get(ch)
            if got is not None and now - got[0] <= max_age_s and (best is None or got[0] > best[0]):
                best = got
        if best is None:
            return None
        return {**dict.fromkeys(protocol.REPORT_FIELDS), **best[1], "age_s": now - best[0]}

    def stats(self) -> dict:
        """The room's metric dictionary (what `stats` messages, /metrics and the widget show)."""
        s, m = self.session, self.session.metrics
        produced = s.slot.produced
        drop_pct = 100.0 * s.slot.dropped / produced if produced else 0.0
        out = {k: v for k, v in m.summary().items() if v is not None}
        out.update({"fps_target": s.fps_target, "fps_actual": m.rate("sent"),
                    "drop_pct": drop_pct, "bitrate_kbps": m.rate("bytes") * 8 / 1000,
                    "kv_bytes": self.model.kv_bytes(s.state), "relay_pct": ice.relay_pct(self.pcs),
                    "rung": self.track.rung, "quality": self.quality, "viewers": self.viewers,
                    "codec": self.codec,
                    "frame_id": s.frame_id, "session": s.id, "room": self.id})
        if self.audio is not None:
            out.update(s.sound.counts())
        return out


class RoomRegistry:
    """The live rooms by id, and ids reserved while their session starts: at most `max_sessions` of both,
    each admitted by the cost caps. Ids are checked against live and reserved ones before any await."""

    def __init__(self, cfg: SessionConfig, caps: CostControls):
        self.cfg, self.caps = cfg, caps
        self.live: dict[str, Room] = {}
        self._creating: dict[str, str | None] = {}  # room id -> tenant

    def __len__(self) -> int:
        return len(self.live)

    def get(self, room_id) -> Room | None:
        return self.live.get(room_id)

    def reserve(self, room_id: str | None, tenant: str | None, scheduler=None) -> str:
        """A free id (random and unguessable without `room_id`) and a session slot, or OfferError 409
        room_taken / 503 server_full / 503 server_busy (load shedding, for a room on `scheduler`) / the caps'
        refusal. Release it with `release` once the room is added."""
        if room_id is not None and (room_id in self.live or room_id in self._creating):
            raise OfferError(409, "room_taken", f"room {room_id!r} already has a player")
        if len(self.live) + len(self._creating) >= self.cfg.max_sessions:
            raise OfferError(503, "server_full", f"the server is full ({self.cfg.max_sessions} live sessions); "
                                                 "try again later")
        if (why := shedding.busy_reason(self.cfg, scheduler, self.live.values(), len(self._creating))) is not None:
            self.caps.hits["server_busy"] += 1
            raise OfferError(503, "server_busy", f"the server is busy ({why}); try again later",
                             shedding.RETRY_AFTER_S)
        try:
            self.caps.admit(room_id, tenant, [r.tenant for r in self.live.values()] + list(self._creating.values()))
        except CapExceeded as exc:
            raise OfferError(exc.status, exc.code, str(exc), exc.retry_after_s) from None
        room_id = room_id or secrets.token_urlsafe(self.cfg.room_id_bytes)
        self._creating[room_id] = tenant
        return room_id

    def release(self, room_id: str) -> None:
        self._creating.pop(room_id, None)

    def add(self, room: Room) -> None:
        self.live[room.id] = room

    def remove(self, room: Room) -> bool:
        """Forget `room` if it is the live one under its id (not one that replaced it); True if it was."""
        if self.live.get(room.id) is not room:
            return False
        del self.live[room.id]
        return True
