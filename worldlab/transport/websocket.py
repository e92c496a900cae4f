"""The WebCodecs fallback where UDP is blocked: a room's H.264 access units (binary: HEADER + Annex-B AU) over a
WebSocket, decoded by the page's VideoDecoder; text messages both ways are `ctl`, handled by PeerHub as for WebRTC."""

from __future__ import annotations

import asyncio
import logging
import struct

from aiohttp import WSMsgType, web
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger(__name__)
VERSION = 1
KEYFRAME = 0x01
HEADER = struct.Struct(">BBHIQ")  # version, flags, reserved, frame_id, pts (90 kHz, from the session origin)
CODEC = "h264"  # the room's encoder; the page asks VideoDecoder for avc1.42E01F (constrained baseline)


class FramingError(ValueError):
    pass


def pack_au(frame_id: int, pts: int, keyframe: bool, data: bytes) -> bytes:
    """One binary message: HEADER + the access unit (Annex-B NAL units, start codes included)."""
    return HEADER.pack(VERSION, KEYFRAME if keyframe else 0, 0, frame_id & 0xFFFFFFFF, max(0, pts)) + data


def unpack_au(buf: bytes) -> tuple[int, int, bool, bytes]:
    """(frame_id, pts, keyframe, access unit) of a binary message; FramingError for anything else."""
    if len(buf) <= HEADER.size:
        raise FramingError(f"message of {len(buf)} bytes is shorter than the {HEADER.size}-byte header + data")
    version, flags, _, frame_id, pts = HEADER.unpack_from(buf)
    if version != VERSION:
        raise FramingError(f"header version {version}, expected {VERSION}")
    return frame_id, pts, bool(flags & KEYFRAME), bytes(buf[HEADER.size:])


class SocketChannel:
    """A ctl channel over a WebSocket with what PeerHub needs of one (`readyState`, `send(text)`), plus access
    units; one writer task keeps text and binary in the order they were queued."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    @property
    def readyState(self) -> str:  # noqa: N802 (RTCDataChannel's name: PeerHub._send reads it)
        return "closed" if self.closed or self.ws.closed else "open"

    def send(self, text: str) -> None:
        self.queue.put_nowait(text)

    async def send_au(self, message: bytes) -> None:
        """Queue an access unit and wait until everything before it is written: a slow socket holds the pump
        back (the session's slot then drops stale frames before encoding) instead of piling up encoded ones."""
        self.queue.put_nowait(message)
        await self.queue.join()

    async def run(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                if not self.ws.closed:
                    await (self.ws.send_str(item) if isinstance(item, str) else self.ws.send_bytes(item))
            except (ConnectionError, RuntimeError):  # the page went away mid-write: the reader sees the close
                self.closed = True
            finally:
                self.queue.task_done()


async def pump(track, channel) -> None:
    """A room's H.264 track, paced by the session clock as for WebRTC, into `channel` (a SocketChannel, or any
    object with `closed` and async `send_au(message)`: the widget's comm) until either ends."""
    while not channel.closed:
        try:
            packet = await track.recv()
        except MediaStreamError:  # the room closed (player left, drain, fault): its `error` is already queued
            return
        except Exception as exc:  # a bug must end this stream visibly, not as an unretrieved task error
            log.warning("access-unit stream of session %s failed: %s: %s", track.session.id, type(exc).__name__, exc)
            return
        await channel.send_au(pack_au(track.frame_id or 0, packet.pts, packet.is_keyframe, bytes(packet)))


async def serve(ws: web.WebSocketResponse, hub, room, flush_s: float = 1.0) -> None:
    """Stream `room` (made by PeerHub.open_socket_room) into the prepared socket `ws` and feed its text messages
    to the hub's ctl handler, until the page or the room goes; the room ends with its player."""
    channel = SocketChannel(ws)
    hub.attach_channel(room, channel)
    writer = asyncio.ensure_future(channel.run())
    pump_task = asyncio.ensure_future(pump(room.track, channel))
    pump_task.add_done_callback(lambda t: t.cancelled() or asyncio.ensure_future(_close_after(channel, flush_s)))
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                hub.ctl.receive(room, channel, msg.data, False)
    finally:
        channel.closed = True
        pump_task.cancel()
        await hub.detach_channel(room, channel)
        writer.cancel()


async def _close_after(channel: SocketChannel, flush_s: float) -> None:
    """The room is gone: let its last messages (an `error` saying why) go out, then close the socket."""
    try:
        await asyncio.wait_for(channel.queue.join(), flush_s)
    except asyncio.TimeoutError:
        pass
    await channel.ws.close()
