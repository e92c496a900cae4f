"""Peers: SDP offers become rooms' WebRTC peers (a player, spectators through MediaRelay), and rooms end
when their players leave, fail, hit a cap or the server drains.

`PeerHub.offer(...)` turns an SDP offer into an answer; the aiohttp server and the JupyterLab widget both
call it (the widget carries the SDP over its comm instead of HTTP). Who does what around it: rooms and their
admission are worldlab.transport.rooms, the ctl protocol worldlab.transport.ctl, the rung choice
worldlab.transport.quality.adapt, a model hot-swap worldlab.engine.models.

Guards (numbers in worldlab.config.SessionConfig): at most `max_sessions` rooms and `max_viewers_per_room`
spectators (503 server_full / room_full); a peer that is not connected `connect_timeout_s` after its answer
is dropped, and a player's room with it; the data channel advertises `sctp_max_message_bytes` and a peer
that sends more in one message is disconnected before aiortc reassembles it; with `ice_host`, WebRTC's UDP
sockets bind that address only (aiortc has no option for it: see `_ice_host_addresses`). Tenant and frame
caps are worldlab.transport.caps; `start_drain` stops admitting and ends every room by a deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import math
import re
import secrets
import socket
import time

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.rtcrtpsender import RTCRtpSender

from worldlab import allocator
from worldlab.config import WILDCARD_HOSTS, SessionConfig
from worldlab.engine import Scheduler, Session
from worldlab.engine.audio import MAX_LEAD_S, SoundScore
from worldlab.engine.models import describe, open_session, switch_model
from worldlab.security import records as session_records
from worldlab.security import safety
from worldlab.security.ringbuffer import TriageStore
from worldlab.security.watermark import Embedder, format_id
from worldlab.telemetry import notify
from worldlab.transport import av1, protocol, websocket
from worldlab.transport.audio import RoomAudioTrack
from worldlab.transport.caps import CostControls
from worldlab.transport.consent import tighten_consent
from worldlab.transport.ctl import Ctl, send
from worldlab.transport.playout_delay import enable as enable_zero_playout_delay
from worldlab.transport.quality import Ladder, QualityController, adapt
from worldlab.transport.rooms import OfferError, Room, RoomRegistry
from worldlab.transport.track import RoomTrack, rtcp_reports

log = logging.getLogger(__name__)
av1.register()  # aiortc has no AV1: our payloader, depayloader and codec entry (worldlab.transport.av1)
enable_zero_playout_delay()  # every video packet asks the browser to render it at once (no jitter-buffer hold)
IDLE_POLL_S = 0.25  # how often an idle room (every peer silent) looks for a report: its resume is this much later
MIME = {"vp8": "video/VP8", "h264": "video/H264", "av1": av1.MIME}  # worldlab.config.CODECS -> the RTP codec it negotiates
_RTPMAP = re.compile(r"^a=rtpmap:\d+ ([A-Za-z0-9-]+)/", re.MULTILINE)


def _offered(sdp: str) -> set[str] | None:
    """The codecs of MIME that the offer's video section lists (None: the offer has no video section)."""
    video = re.search(r"^m=video .*?(?=^m=|\Z)", sdp, re.MULTILINE | re.DOTALL)
    if video is None:
        return None
    names = {n.upper() for n in _RTPMAP.findall(video.group(0))}
    return {c for c, mime in MIME.items() if mime.split("/")[1].upper() in names}


def _check_offered(sdp: str, codec: str) -> None:
    """A codec the page asked for must be in its offer's video section (a browser that cannot decode AV1 does
    not offer it): else 400 codec_not_offered, not a negotiation that silently picks another codec."""
    offered = _offered(sdp)
    if offered is not None and codec not in offered:  # no video section at all: negotiation says bad_sdp
        name = MIME[codec].split("/")[1]
        raise OfferError(400, "codec_not_offered", f"the browser's offer has no {name}, so it cannot decode it; "
                                                   "choose a codec it offers")


def _default_for(sdp: str, default: str) -> str:
    """The server's default codec for an offer that names none, unless the browser cannot decode it (e.g.
    `serve --codec av1` and a browser without AV1): then H.264, then VP8, whichever it offers. An offer with
    none of them keeps the default, and negotiation refuses it as bad_sdp."""
    offered = _offered(sdp)
    if offered is None or default in offered:
        return default
    return next((c for c in ("h264", "vp8") if c in offered), default)


# -- ICE bind address --------------------------------------------------------------------------------
# aiortc (1.16) has no setting for the address its ICE (UDP) sockets bind: aioice.Connection.gather_candidates
# binds one socket per address from the module function aioice.ice.get_host_addresses (every interface but
# 127.0.0.1). We wrap that function once; inside PeerHub._answer a context variable names the one address to
# use (asyncio tasks inherit it), so other RTCPeerConnections in the process are unaffected.
_ICE_HOST: contextvars.ContextVar[str | None] = contextvars.ContextVar("worldlab_ice_host", default=None)


def _install_ice_host_hook() -> bool:
    try:
        import aioice.ice as aioice_ice

        orig = aioice_ice.get_host_addresses
    except (ImportError, AttributeError):  # aioice changed: fall back to every interface (and say so)
        log.warning("cannot restrict WebRTC ICE sockets to one address with this aioice; they bind every interface")
        return False
    if getattr(orig, "_worldlab_hook", False):
        return True

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        host = _ICE_HOST.get()
        return [host] if host is not None else orig(use_ipv4=use_ipv4, use_ipv6=use_ipv6)

    get_host_addresses._worldlab_hook = True
    aioice_ice.get_host_addresses = get_host_addresses
    return True


def ice_bind_address(host: str | None) -> str | None:
    """The address WebRTC should bind for an HTTP `host`: None (every interface) for a wildcard."""
    if host is None or host in WILDCARD_HOSTS:
        return None
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0]
    except OSError as exc:
        raise ValueError(f"cannot resolve host {host!r}: {exc}") from None


# -- data-channel size cap -------------------------------------------------------------------------------
_MAX_MSG_SDP = re.compile(r"^a=max-message-size:\d+", re.MULTILINE)


def _cap_sctp_messages(pc, limit: int, on_violation) -> bool:
    """Disconnect a peer whose data-channel message grows past `limit` bytes while being reassembled.

    aiortc reassembles any message before handing it over (an 8 MB one was accepted, then refused by
    protocol.parse). It has no option for this, so we wrap the SCTP transport's DATA chunk handler on this
    connection: after each chunk we measure the partial message that chunk belongs to (its run of
    consecutive TSNs) and, past the limit, drop the stream's fragments, ignore the peer's further chunks and
    call `on_violation` (which closes the connection). Complete messages up to the limit still reach
    protocol.parse, which answers `too_large` above the config's max_message_bytes. Returns False if the hook
    could not be installed (aiortc internals changed), in which case only the advertised size protects us."""
    try:
        from aiortc import rtcsctptransport as sctp_mod

        first, last = sctp_mod.SCTP_DATA_FIRST_FRAG, sctp_mod.SCTP_DATA_LAST_FRAG
        sctp = pc.sctp
        orig = sctp._receive_data_chunk
        streams = sctp._inbound_streams
    except AttributeError:
        log.warning("cannot cap data-channel message size with this aiortc; relying on max-message-size")
        return False
    mask = 0xFFFFFFFF
    violated = False

    def partial_size(chunks, tsn) -> int:
        idx = next((i for i, c in enumerate(chunks) if c.tsn == tsn), None)
        if idx is None:
            return 0  # the chunk completed (or was part of) a message already delivered
        size, i = len(chunks[idx].user_data), idx
        while not chunks[i].flags & first and i > 0 and chunks[i - 1].tsn == (chunks[i].tsn - 1) & mask:
            i -= 1
            size += len(chunks[i].user_data)
        j = idx
        while not chunks[j].flags & last and j + 1 < len(chunks) and chunks[j + 1].tsn == (chunks[j].tsn + 1) & mask:
            j += 1
            size += len(chunks[j].user_data)
        return size

    async def guarded(chunk) -> None:
        nonlocal violated
        if violated:
            return
        await orig(chunk)
        stream = streams.get(chunk.stream_id)
        if stream is not None and stream.reassembly and partial_size(stream.reassembly, chunk.tsn) > limit:
            violated = True
            stream.reassembly.clear()
            on_violation()

    sctp._receive_data_chunk = guarded
    return True


def _add_sound(room: Room, lead_ms: float) -> None:
    """The room's sound on the video's clock: the model worker reads each frame (Session.sound), the video track
    places its click and pitch as it sends it, the audio track sends the samples (worldlab.engine.audio)."""
    score = SoundScore(room.session.origin, fps=room.session.fps_target, lead_s=lead_ms / 1000)
    room.session.sound = room.track.sound = score
    room.audio = RoomAudioTrack(room.session, score)


class PeerHub:
    def __init__(self, model, scheduler: Scheduler, *, codec: str = "vp8", fps: float = 30.0,
                 keyframe_interval_s: float = 0.75, seed: int = 0, stats_interval_s: float = 1.0,
                 config: SessionConfig | None = None, ice_host: str | None = None,
                 records: session_records.RecordStore | None = None, triage: TriageStore | None = None,
                 observers=()):
        """config: limits and timeouts (SessionConfig); ice_host: bind WebRTC's UDP sockets to this address
        only (the HTTP host; None or a wildcard = every interface, aioice's default); records: where each new
        room's signed session record is appended (None: no records); triage: keeps each room's encrypted
        triage buffer, sealed on a safety flag or by `seal_triage` (None: no buffer); observers:
        worldlab.telemetry.Observer-s (histograms, spans) told of sessions, inputs, frames, reports, rtt."""
        if codec not in MIME:
            raise ValueError(f"codec must be one of {tuple(MIME)}, got {codec!r}")
        self.cfg = config or SessionConfig()
        lo, hi = self.cfg.fps_range
        if not lo <= fps <= hi:
            raise ValueError(f"fps must be in [{lo:g}, {hi:g}], got {fps:g}")
        self.model, self.scheduler = model, scheduler
        self.codec, self.fps, self.kf = codec, fps, keyframe_interval_s
        self.seed = seed
        self.triage = triage
        self.observers = tuple(observers)
        self.stats_interval = stats_interval_s
        self.ladder = Ladder(self.cfg.quality_ladder)  # a bad ladder in `serve --config` fails here
        self.ladder[self.cfg.quality_start]  # and so does a start rung that is not on it
        if not 0 <= self.cfg.audio_lead_ms <= MAX_LEAD_S * 1000:  # and an audio lead out of range
            raise ValueError(f"audio_lead_ms must be in [0, {MAX_LEAD_S * 1000:g}], got {self.cfg.audio_lead_ms!r}")
        self.ice_host = ice_bind_address(ice_host)
        if self.ice_host is not None and not _install_ice_host_hook():
            self.ice_host = None
        self.records = records.prepare() if records is not None else None  # a bad key path fails now
        self.caps = CostControls(self.cfg)
        self.registry = RoomRegistry(self.cfg, self.caps)
        self.ctl = Ctl(self.cfg, self.observers, on_flag=lambda room, why: self._spawn(self.seal_triage(room, why)))
        self.pcs: set[RTCPeerConnection] = set()
        self._tasks: set[asyncio.Task] = set()
        self._deadlines: dict = {}  # pc -> its _connect_deadline task, until it connects or is dropped
        self.closed = False
        self._caps_task: asyncio.Task | None = None
        # Closed rooms' cycles and native buffers are freed shortly after (worldlab.allocator)
        self.releaser, self._release_task = allocator.Releaser(self.cfg.memory_release_interval_s), None
        self.draining_until: float | None = None  # time.monotonic() of the drain deadline, once draining
        self.drained = asyncio.Event()  # set when a drain has ended every room

    @property
    def rooms(self) -> dict[str, Room]:
        """The live rooms by id (the registry's)."""
        return self.registry.live

    # -- offers --------------------------------------------------------------------------------
    async def offer(self, sdp: str, kind: str, *, room: str | None = None, prompt: str | None = None,
                    role: str = "player", quality: str = "auto", join: bool = False,
                    tenant: str | None = None, codec: str | None = None) -> dict:
        """join=True adds another steering view to an existing room (the widget displayed twice).
        tenant: the caller's access-token tenant; only the room's own tenant may join it (403 wrong_tenant).
        codec: the video codec the caller asked for (one of MIME; None: the hub's default); a joining peer
        gets the room's, and asking for another is 409 codec_mismatch."""
        if codec is not None:
            if not isinstance(codec, str) or codec not in MIME:  # a JSON list or number is a bad codec too
                raise OfferError(400, "bad_codec", f"codec must be one of {tuple(MIME)}, got {codec!r}")
            _check_offered(sdp, codec)
        if self.closed:
            raise OfferError(503, "shutting_down", "the server is shutting down")
        self._refuse_if_draining()
        if role == "viewer" or (join and room in self.rooms):
            if room not in self.rooms:
                raise OfferError(404, "unknown_room", f"no live room {room!r}")
            if self.rooms[room].socket:
                raise OfferError(409, "socket_room", f"room {room!r} streams over a WebSocket (the WebCodecs "
                                                     "fallback): it has no WebRTC stream to join")
            if self.rooms[room].tenant != tenant:
                raise OfferError(403, "wrong_tenant", f"room {room!r} belongs to another tenant")
            if codec is not None and codec != self.rooms[room].codec:
                raise OfferError(409, "codec_mismatch", f"room {room!r} streams {self.rooms[room].codec}; "
                                                        "join it without a codec or with that one")
            return await self._answer(self.rooms[room], sdp, kind, viewer=role == "viewer")
        # Stepped from its peer's connection on: an offer that never connects (killed mid-handshake, no
        # candidates) must not cost connect_timeout_s of model steps.
        r = await self.create_room(prompt, room=room, quality=quality, tenant=tenant,
                                   codec=codec or _default_for(sdp, self.codec), start=False)
        try:
            return await self._answer(r, sdp, kind, viewer=False)
        except Exception:
            await self._close_room(r)
            raise

    async def create_room(self, prompt: str | None = None, *, room: str | None = None, quality: str = "auto",
                          persistent: bool = False, tenant: str | None = None, codec: str | None = None,
                          start: bool = True) -> Room:
        """A live session with its track but no peer yet: frames flow and metrics accrue (headless runs); with
        start=False the model steps it only once a peer connects (a room made for an offer).

        Without `room`, the id is random and unguessable. Raises OfferError 409 room_taken for a live (or
        starting) room id and 503 server_full at `max_sessions` rooms."""
        prompt = prompt or "a walk in the forest"
        asked_at = time.monotonic()  # the telemetry funnel's offer -> first frame starts here
        try:
            safety.screen_prompt(prompt)
        except safety.PromptRefused as exc:
            safety.REVIEW.flag(f"room:{room or '-'}", "prompt", str(exc))
            raise OfferError(400, "prompt_refused", str(exc)) from None
        room = self.registry.reserve(room, tenant, self.scheduler)  # id and session slot, before the first await
        try:
            loop = asyncio.get_running_loop()
            state = await loop.run_in_executor(None, open_session, self.model, prompt, self.seed)
        finally:
            self.registry.release(room)
        if self.closed:
            raise OfferError(503, "shutting_down", "the server is shutting down")
        self._refuse_if_draining()
        session = Session(state, prompt, fps_target=self.fps, room=room)
        r = Room(session.room, session, None, MediaRelay(), quality=quality, scheduler=self.scheduler,
                 persistent=persistent, tenant=tenant, codec=codec or self.codec,
                 adapt=QualityController(self.cfg, quality, ladder=self.ladder))
        r.watermark_id = secrets.randbits(64) if self.cfg.watermark else None
        self._record(r)  # before the room exists: a failed write leaves nothing behind
        r.track = self._track(r, r.codec)
        if self.triage is not None:
            r.triage = self.triage.buffer(session.id, r.track.encoder.codec_name)
            r.track.on_packet = lambda p: r.triage.add_frame(bytes(p), p.pts, p.is_keyframe)
        r.track.set_rung(r.adapt.rung.name)
        if self.cfg.audio:
            _add_sound(r, self.cfg.audio_lead_ms)
        self.registry.add(r)
        self._watch_faults(r)
        notify(self.observers, "session_started", session, asked_at)
        if start:
            self.scheduler.add(session)
        self._spawn(self._stats_loop(r))
        if self._caps_task is None or self._caps_task.done():
            self._caps_task = self._spawn(self._caps_loop())
        if self._release_task is None or self._release_task.done():
            self._release_task = self._spawn(self.releaser.run())
        return r

    def _track(self, r: Room, codec: str, observers=None) -> RoomTrack:
        return RoomTrack(r.session, codec=codec, keyframe_interval_s=self.kf,
                         on_frame=lambda fid, pts, meta, emit: self._on_frame(r, fid, pts),
                         frame_shape=tuple(self.model.frame_shape),
                         observers=self.observers if observers is None else observers, ladder=self.ladder,
                         steady_send=r.session.fps_target >= self.cfg.steady_send_min_fps,
                         watermark=None if r.watermark_id is None else Embedder(r.watermark_id, self.cfg.watermark_key))

    def _record(self, room: Room) -> None:
        """Append the room's signed session record (what `worldlab verify` finds by watermark id)."""
        if self.records is None or room.watermark_id is None:
            return
        self.records.append(session_records.make_record(
            room.session.id, format_id(room.watermark_id), room.id,
            session_records.model_hash(describe(self.model)), tenant=room.tenant))

    @staticmethod
    async def switch_model(room: Room, scheduler: Scheduler) -> None:
        """Hot-switch a live room to another model variant (`scheduler`'s), prefilled from its recent frames."""
        await switch_model(room.session, room.scheduler, scheduler)
        room.scheduler = scheduler

    async def _answer(self, room: Room, sdp: str, kind: str, *, viewer: bool) -> dict:
        if viewer and room.viewers >= self.cfg.max_viewers_per_room:
            raise OfferError(503, "room_full", f"room {room.id!r} has its maximum of "
                                               f"{self.cfg.max_viewers_per_room} spectators; try again later")
        # Bound to one address: no STUN either (a loopback socket cannot reach a STUN server anyway).
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]) if self.ice_host is not None else None)
        self.pcs.add(pc)
        room.pcs.add(pc)
        transceiver = pc.addTransceiver(room.relay.subscribe(room.track, buffered=False), direction="sendonly")
        caps = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == MIME[room.codec]]
        transceiver.setCodecPreferences(caps)
        if room.audio is not None and "m=audio" in sdp:  # an offer without audio (an older page) gets video only
            pc.addTransceiver(room.relay.subscribe(room.audio, buffered=False), direction="sendonly")

        @pc.on("datachannel")
        def on_dc(channel):
            room.channels.add(channel)
            if not viewer:
                room.player_channels.add(channel)
            if self.draining_until is not None:  # answered just before the drain began
                send(channel, self._drain_message())

            @channel.on("message")
            def on_message(raw):
                self.ctl.receive(room, channel, raw, viewer)

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState == "connected":
                self._end_deadline(pc)
                self._set_idle(room, False)  # a first peer, or a viewer: the model steps, the track streams
            if pc.connectionState in ("failed", "closed"):
                await self._drop_pc(room, pc, viewer)

        if viewer:
            room.viewers += 1  # counted before the first await: concurrent offers cannot overshoot the limit
        token = _ICE_HOST.set(self.ice_host)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            if pc.sctp is not None:
                _cap_sctp_messages(pc, self.cfg.sctp_max_message_bytes,
                                   lambda: self._refuse_oversized(room, pc, viewer))
            await pc.setLocalDescription(await pc.createAnswer())
            tighten_consent(pc, self.cfg.consent_interval_s, self.cfg.consent_failures)
        except Exception as exc:  # aiortc raises many kinds on a malformed SDP; none of its text goes out
            log.info("offer for room %s refused: %s: %s", room.id, type(exc).__name__, exc)
            await self._drop_pc(room, pc, viewer)
            raise OfferError(400, "bad_sdp", "could not negotiate the offer: malformed or unsupported SDP") from None
        finally:
            _ICE_HOST.reset(token)
        if viewer:
            room.track.request_keyframe()  # a new viewer must not wait for the next GOP
        self._deadlines[pc] = self._spawn(self._connect_deadline(room, pc, viewer))
        answer_sdp = _MAX_MSG_SDP.sub(f"a=max-message-size:{self.cfg.sctp_max_message_bytes}",
                                      pc.localDescription.sdp)
        return {"sdp": answer_sdp, "type": pc.localDescription.type,
                "session": room.session.id, "room": room.id, "role": "viewer" if viewer else "player",
                "codec": room.codec}

    async def _connect_deadline(self, room: Room, pc, viewer: bool) -> None:
        """Drop a peer that is not connected `connect_timeout_s` after its answer (no ICE candidates, killed
        after the answer, DTLS never finished); a player's room ends with it and frees its id."""
        await asyncio.sleep(self.cfg.connect_timeout_s)
        self._deadlines.pop(pc, None)  # from here on it must not be cancelled by the drop it makes
        if pc in room.pcs and pc.connectionState != "connected":
            log.info("peer in room %s not connected after %.1f s (state %s): dropped", room.id,
                     self.cfg.connect_timeout_s, pc.connectionState)
            await self._drop_pc(room, pc, viewer)

    def _refuse_oversized(self, room: Room, pc, viewer: bool) -> None:
        log.warning("peer in room %s sent a data-channel message over %d bytes: disconnected", room.id,
                    self.cfg.sctp_max_message_bytes)
        self._spawn(self._drop_pc(room, pc, viewer))

    # -- triage and frames ------------------------------------------------------------------------
    async def seal_triage(self, room: Room, reason: str):
        """Write the room's triage buffer to disk (still encrypted); the path, or None without a buffer."""
        if room.triage is None or self.triage is None:
            return None
        path = await asyncio.get_running_loop().run_in_executor(None, self.triage.seal, room.triage, reason)
        log.warning("triage buffer of session %s sealed to %s (%s)", room.session.id, path, reason)
        return path

    def _on_frame(self, room: Room, frame_id: int, pts: int) -> None:
        for seq, fid in room.session.pop_acks():
            for ch in room.player_channels:
                send(ch, protocol.encode("ack", seq=seq, frame_id=fid))
        lead = room.session.sound.click_lead_ms(frame_id) if room.audio is not None else None
        click = {} if lead is None else {"click": True, "lead_ms": round(lead, 1)}  # the page pairs it with the sound
        msg = protocol.encode("frame", frame_id=frame_id, pts=pts, **click)
        for ch in room.channels:
            send(ch, msg)

    # -- WebSocket players (the WebCodecs fallback: worldlab.transport.websocket) -------------------
    async def open_socket_room(self, prompt: str | None = None, *, room: str | None = None, quality: str = "auto",
                               tenant: str | None = None) -> Room:
        """A room streamed as H.264 over a WebSocket (its own track pulls the frames; no spectators). A named
        room of the same tenant whose WebRTC peers never connected (the page's ICE failed: it falls back) is
        replaced instead of answered with room_taken."""
        if self.closed:
            raise OfferError(503, "shutting_down", "the server is shutting down")
        old = self.rooms.get(room) if room is not None else None
        if (old is not None and old.tenant == tenant and not old.persistent and not old.socket
                and not old.player_channels and all(pc.connectionState != "connected" for pc in old.pcs)):
            log.info("room %s: its WebRTC peer never connected; the WebSocket fallback replaces it", room)
            await self._close_room(old)
        r = await self.create_room(prompt, room=room, quality=quality, tenant=tenant, codec=websocket.CODEC)
        r.socket = True
        return r

    def attach_channel(self, room: Room, channel) -> None:
        """A socket's ctl channel joins the room as its player (acks, frames, stats, drain, errors)."""
        room.channels.add(channel)
        room.player_channels.add(channel)
        room.track.request_keyframe()
        if self.draining_until is not None:
            send(channel, self._drain_message())

    def unit_track(self, room: Room) -> RoomTrack:
        """A second track of a WebRTC room's session, H.264 for a player that takes access units instead (the
        widget's fallback over its comm; worldlab.transport.websocket.pump). Its frames ack and announce to the
        room's channels like the room's own; per-frame observers stay with that one (no double counting)."""
        track = self._track(room, websocket.CODEC, observers=())
        track.set_rung(room.track.rung)
        return track

    async def detach_channel(self, room: Room, channel) -> None:
        """The socket closed: its room ends with it, like a WebRTC player's."""
        room.forget_channel(channel)
        if self.rooms.get(room.id) is room and not room.persistent:
            await self._close_room(room)

    # -- stats and adaptive quality --------------------------------------------------------------
    async def _stats_loop(self, room: Room) -> None:
        rtcp_seen: dict = {}
        heard: dict = {}  # connected pc -> time.monotonic() of its last RTCP report (or of its connection)
        while self.rooms.get(room.id) is room and not self.closed:
            # An idle room listens for the next report more often: it is the only sign that its peer is back.
            await asyncio.sleep(IDLE_POLL_S if room.track.idle else self.stats_interval)
            # Each sender's stats every interval: only when the RTT histogram or the silence watch reads them.
            reports = await rtcp_reports(room.pcs, rtcp_seen) if self.observers or self.cfg.peer_silence_s > 0 else []
            self._watch_silence(room, heard, reports)
            if room.track.idle:
                continue  # two probe frames a second are not a quality signal, nor worth a stats message to nobody
            st = room.stats()
            if self.observers:
                notify(self.observers, "room_stats", room.session, st)
                for _, ms in reports:
                    if ms is not None:
                        notify(self.observers, "rtt", room.session, ms)
            await adapt(room, st, self.stats_interval)
            self._steer_audio(room)
            msg = protocol.encode("stats", **st)
            for ch in list(room.channels):
                send(ch, msg)

    def _watch_silence(self, room: Room, heard: dict, reports) -> None:
        """Idle the room's track while every connected peer has been silent (no RTCP report) for peer_silence_s:
        a client that died without a goodbye is otherwise streamed to until consent fails (~10 s)."""
        if self.cfg.peer_silence_s <= 0 or room.socket:
            return
        now = time.monotonic()
        for pc in [pc for pc in heard if pc not in room.pcs or pc.connectionState != "connected"]:
            del heard[pc]
        for pc in room.pcs:
            if pc.connectionState == "connected":
                heard.setdefault(pc, now)
        for pc, _ in reports:
            if pc in heard:
                heard[pc] = now
        silent = bool(heard) and all(now - t >= self.cfg.peer_silence_s for t in heard.values())
        if silent != room.track.idle:
            log.info("room %s: %s", room.id, "every peer silent: idle" if silent else "a peer reports again")
            self._set_idle(room, silent)

    @staticmethod
    def _set_idle(room: Room, idle: bool) -> None:
        """Idle: the track sends probe frames only and the model stops stepping the session (nobody sees its
        frames: the world waits where its peers left it, so one back from an outage has missed nothing, and a
        dead client's room costs next to nothing). Not idle: full rate, and the model steps it."""
        room.track.set_idle(idle)
        stepping = room.scheduler.stepping(room.session)
        if idle and stepping:
            room.scheduler.detach(room.session)
        elif not idle and not stepping and not room.session.closed and room.session.fault is None:
            room.scheduler.add(room.session)

    def _steer_audio(self, room: Room) -> None:
        """The audio lead follows the player's page: its measured audio path minus video path (`av_path_ms`,
        the median of its latest clicks), so a click is heard as its bounce is seen (docs/streaming.md, Audio)."""
        page = room.page_report() if room.audio is not None else None
        if page is not None and page.get("av_path_ms") is not None:
            room.session.sound.set_lead(min(float(page["av_path_ms"]), MAX_LEAD_S * 1000) / 1000)

    # -- teardown ------------------------------------------------------------------------------
    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _close_pc(pc) -> None:
        try:
            await pc.close()
        except Exception as exc:  # a half-negotiated pc (e.g. a mutated SDP) can fail to close cleanly
            log.debug("closing a peer connection failed: %s: %s", type(exc).__name__, exc)

    def _end_deadline(self, pc) -> None:
        """The peer connected or is gone: its connect deadline's task ends now. Left asleep, it held the room and
        the peer (encoder, transports: ~10 MB) for connect_timeout_s after they closed: measured, +1.1 GB of RSS
        under 4 lanes of short sessions while any room was open (docs/streaming.md, Memory under churn)."""
        task = self._deadlines.pop(pc, None)
        if task is not None:
            task.cancel()

    async def _drop_pc(self, room: Room, pc, viewer: bool) -> None:
        self._end_deadline(pc)
        if pc in room.pcs:
            room.pcs.discard(pc)
            self.pcs.discard(pc)
            if viewer:
                room.viewers = max(0, room.viewers - 1)
            sctp = pc.sctp
            for ch in [c for c in room.channels if sctp is not None and getattr(c, "transport", None) is sctp]:
                room.forget_channel(ch)  # a churned spectator must not leave its channel behind
            await self._close_pc(pc)
        if not viewer and self.rooms.get(room.id) is room:  # not a room that has replaced it under the same id
            if not room.persistent:
                await self._close_room(room)
            elif not room.pcs and room.on_players_gone is not None:
                room.on_players_gone()

    def _watch_faults(self, room: Room) -> None:
        """Session.fail may run on the model worker: hop onto this loop to end the room."""
        loop = asyncio.get_running_loop()

        def on_fault():
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: self._spawn(self._fail_room(room)))

        room.session.on_fault = on_fault

    async def _fail_room(self, room: Room) -> None:
        """A fatal fault in the room's session (model_failed, model_stalled, encoder_failed): every peer
        gets the `error`, then the room closes like one whose player left."""
        code, message = room.session.fault
        await self._end_room(room, code, message)

    async def _end_room(self, room: Room, code: str, message: str, **extra) -> None:
        """Every peer of the room gets `error` {code, message, **extra}, then the room closes."""
        if self.rooms.get(room.id) is not room:
            return
        log.warning("room %s ends: %s", room.id, code)
        for ch in list(room.channels):
            send(ch, protocol.encode("error", code=code, message=message, **extra))
        await asyncio.sleep(self.cfg.fault_grace_s)  # closing aborts SCTP at once: let the error go out first
        await self._close_room(room)

    # -- cost caps and drain ---------------------------------------------------------------------
    async def _caps_loop(self) -> None:
        """Charge frames, end rooms over a frame cap, flag anomalies (worldlab.transport.caps)."""
        while self.rooms and not self.closed:
            await asyncio.sleep(self.cfg.caps_check_s)
            for room, exc in self.caps.check(list(self.rooms.values())):
                self._spawn(self._end_room(room, exc.code, str(exc), retry_after_s=round(exc.retry_after_s, 1)))

    def drain_remaining(self) -> float | None:
        """Seconds left before a drain ends the remaining rooms (None: not draining)."""
        return None if self.draining_until is None else max(0.0, self.draining_until - time.monotonic())

    def _refuse_if_draining(self) -> None:
        if self.draining_until is not None:
            wait = self.drain_remaining()
            raise OfferError(503, "draining", f"the server is restarting (in {math.ceil(wait)} s); "
                                              "try again shortly", retry_after_s=wait)

    def _drain_message(self) -> str:
        return protocol.encode("drain", deadline_s=round(self.drain_remaining(), 1),
                               message="the server is restarting")

    def start_drain(self, deadline_s: float | None = None) -> float:
        """Stop admitting, send every peer `drain` {deadline_s}, end the rooms still live at the deadline
        (`error` drained), then set `drained`. deadline_s defaults to SessionConfig.drain_deadline_s; a
        second call keeps the first deadline. Returns the seconds left."""
        if self.draining_until is None:
            self.draining_until = time.monotonic() + (self.cfg.drain_deadline_s if deadline_s is None else deadline_s)
            log.warning("draining: no new sessions; %d live end within %.1f s", len(self.rooms),
                        self.drain_remaining())
            self._spawn(self._drain())
        return self.drain_remaining()

    async def _drain(self) -> None:
        msg = self._drain_message()
        for room in list(self.rooms.values()):
            for ch in list(room.channels):
                send(ch, msg)
        while self.rooms and time.monotonic() < self.draining_until:
            await asyncio.sleep(0.05)
        await asyncio.gather(*(self._end_room(r, "drained", "the server is restarting; reconnect shortly")
                               for r in list(self.rooms.values())))
        self.drained.set()

    async def _close_room(self, room: Room) -> None:
        if self.registry.remove(room):  # a room replaced under its id (open_socket_room) leaves the new one be
            notify(self.observers, "session_closed", room.session)
            self.caps.settle(room)
        room.scheduler.remove(room.session)
        room.track.stop()
        if room.audio is not None:
            room.audio.stop()
        for pc in list(room.pcs):
            room.pcs.discard(pc)
            self.pcs.discard(pc)
            await self._close_pc(pc)
        self.releaser.freed()

    async def close(self) -> None:
        self.closed = True
        for room in list(self.rooms.values()):
            await self._close_room(room)
        for pc in list(self.pcs):
            await self._close_pc(pc)
        self.pcs.clear()
        for t in list(self._tasks):
            t.cancel()
