"""AV1 over RTP for aiortc (which has none): the payload format's packetizer and depacketizer, an aiortc
encoder that packs RoomEncoder's AV1 packets, a libdav1d decoder, and register() to teach aiortc the codec."""

from __future__ import annotations

import errno
import fractions
from collections.abc import Callable, Iterable

import av
from aiortc.codecs.base import Decoder, Encoder
from aiortc.codecs.vpx import PACKET_MAX
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters

MIME = "video/AV1"
PAYLOAD_TYPE = 45  # Chromium's, so an aiortc offer and a Chromium offer name AV1 alike
OBU_SEQUENCE_HEADER, OBU_TEMPORAL_DELIMITER, OBU_FRAME_HEADER, OBU_FRAME, OBU_TILE_LIST = 1, 2, 3, 6, 8
TEMPORAL_DELIMITER = b"\x12\x00"  # type 2, has_size_field 1, obu_size 0
_HAS_SIZE = 0x02
_EXTENSION = 0x04
Z, Y, N = 0x80, 0x40, 0x08  # aggregation header bits; W is (byte >> 4) & 3

AV1_CODEC = RTCRtpCodecParameters(
    mimeType=MIME, clockRate=90000, payloadType=PAYLOAD_TYPE,
    rtcpFeedback=[RTCRtcpFeedback(type="nack"), RTCRtcpFeedback(type="nack", parameter="pli"),
                  RTCRtcpFeedback(type="goog-remb")],
    parameters={"level-idx": 5, "profile": 0, "tier": 0})
AV1_RTX = RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=PAYLOAD_TYPE + 1,
                                parameters={"apt": PAYLOAD_TYPE})


def leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_leb128(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); ValueError past the end or beyond 8 bytes (the spec's limit)."""
    value = 0
    for i in range(8):
        if pos >= len(data):
            raise ValueError("truncated leb128")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise ValueError("leb128 longer than 8 bytes")


def _header_len(first: int) -> int:
    return 2 if first & _EXTENSION else 1


def split_obus(temporal_unit: bytes) -> list[bytes]:
    """A temporal unit in the low-overhead bitstream format -> its OBU elements as the payload format carries
    them: obu_has_size_field cleared and obu_size removed (the spec says SHOULD), temporal delimiters and tile
    lists dropped (SHOULD be removed)."""
    data, pos, elements = bytes(temporal_unit), 0, []
    while pos < len(data):
        first = data[pos]
        if first & 0x80:
            raise ValueError("OBU forbidden bit set")
        hl = _header_len(first)
        if pos + hl > len(data):
            raise ValueError("truncated OBU header")
        header = bytes([first & ~_HAS_SIZE]) + data[pos + 1:pos + hl]
        if first & _HAS_SIZE:
            size, start = read_leb128(data, pos + hl)
        else:
            size, start = len(data) - pos - hl, pos + hl  # no size: the OBU runs to the end
        if start + size > len(data):
            raise ValueError("OBU runs past the end of the temporal unit")
        if (first >> 3) & 0x0F not in (OBU_TEMPORAL_DELIMITER, OBU_TILE_LIST):
            elements.append(header + data[start:start + size])
        pos = start + size
    return elements


def starts_sequence(elements: Iterable[bytes]) -> bool:
    """A sequence header and a key frame (frame_type KEY_FRAME, not show_existing_frame): the start of a coded
    video sequence, where a receiver can begin decoding (the N bit)."""
    seq = key = False
    for el in elements:
        kind, body = (el[0] >> 3) & 0x0F, el[_header_len(el[0]):]
        if kind == OBU_SEQUENCE_HEADER and body:
            seq = True
            reduced = bool(body[0] & 0x08)  # seq_profile(3) still_picture(1) reduced_still_picture_header(1)
        elif kind in (OBU_FRAME, OBU_FRAME_HEADER) and body and seq:
            # reduced still picture headers code no show_existing_frame / frame_type: always a key frame
            key = key or reduced or body[0] >> 5 == 0  # show_existing_frame 0, frame_type 0 (KEY_FRAME)
    return seq and key


def packetize(temporal_unit: bytes, mtu: int = PACKET_MAX, *, keyframe: bool | None = None) -> list[bytes]:
    """A temporal unit -> RTP payloads of at most `mtu` bytes: OBU elements aggregated, long ones fragmented
    (Y on the packet a fragment continues from, Z on the one it continues in), W = the element count when
    1..3 (the last element then has no length field) else 0, N on the first packet of a new coded video
    sequence (keyframe None: detected from the OBUs)."""
    elements = split_obus(temporal_unit)
    if keyframe is None:
        keyframe = starts_sequence(elements)
    payloads: list[bytes] = []
    packet: list[bytes] = []
    continues = False  # the first element of `packet` continues a fragment

    def close(more: bool) -> None:
        nonlocal packet, continues
        w = len(packet) if len(packet) <= 3 else 0
        head = (Z if continues else 0) | (Y if more else 0) | (w << 4) | (N if keyframe and not payloads else 0)
        body = b"".join((el if w and i == len(packet) - 1 else leb128(len(el)) + el) for i, el in enumerate(packet))
        payloads.append(bytes([head]) + body)
        packet, continues = [], more

    for el in elements:
        pos = 0
        while pos < len(el):
            room = mtu - 1 - sum(len(leb128(len(e))) + len(e) for e in packet)  # earlier elements keep a length
            n = min(len(el) - pos, room)
            if len(packet) >= 3:  # a 4th element makes W 0: it needs a length field too
                while n > 0 and len(leb128(n)) + n > room:
                    n -= 1
            # a first fragment carries at least the whole OBU header, so no packet holds a split header alone
            if n <= 0 or (n < len(el) - pos and pos == 0 and n <= _header_len(el[0])):
                if not packet:
                    raise ValueError(f"mtu {mtu} too small")
                close(False)
                continue
            packet.append(el[pos:pos + n])
            pos += n
            if pos < len(el):
                close(True)
    if packet:
        close(False)
    return payloads


def _elements(payload: bytes) -> tuple[int, list[bytes]]:
    if not payload:
        raise ValueError("empty AV1 payload")
    head, pos, out = payload[0], 1, []
    w = (head >> 4) & 3
    while pos < len(payload):
        if w and len(out) == w - 1:
            size = len(payload) - pos  # the W-th element has no length field: it fills the packet
        else:
            size, pos = read_leb128(payload, pos)
        if pos + size > len(payload):
            raise ValueError("OBU element runs past the end of the payload")
        out.append(payload[pos:pos + size])
        pos += size
    if w and len(out) != w:
        raise ValueError(f"aggregation header says {w} OBU elements, found {len(out)}")
    return head, out


def _obu(element: bytes) -> bytes:
    """An element as the decoder wants it: obu_has_size_field 1 and obu_size written."""
    first = element[0]
    hl = _header_len(first)
    if len(element) < hl:
        raise ValueError("truncated OBU header")
    body = element[hl:]
    if first & _HAS_SIZE:  # a sender may keep the size (only SHOULD remove it)
        size, pos = read_leb128(element, hl)
        body = element[pos:pos + size]
    return bytes([first | _HAS_SIZE]) + element[1:hl] + leb128(len(body)) + body


def depacketize(payloads: Iterable[bytes]) -> bytes:
    """The RTP payloads of one temporal unit, in order -> the temporal unit in the low-overhead bitstream
    format (a temporal delimiter, then each OBU with its size). ValueError when a fragment is missing."""
    out, partial = [TEMPORAL_DELIMITER], None
    for payload in payloads:
        head, elements = _elements(payload)
        if bool(head & Z) != (partial is not None):
            raise ValueError("OBU fragment without its start or its continuation")
        for i, el in enumerate(elements):
            if i == 0 and partial is not None:
                el, partial = partial + el, None
            if i == len(elements) - 1 and head & Y:
                partial = el
            elif el and (el[0] >> 3) & 0x0F not in (OBU_TEMPORAL_DELIMITER, OBU_TILE_LIST):
                out.append(_obu(el))
    if partial is not None:
        raise ValueError("temporal unit ends inside an OBU fragment")
    return b"".join(out)


def frame_payload(payload: bytes) -> bytes:
    """aiortc's per-packet depayload for AV1: aiortc joins a frame's depayloaded packets into one byte string,
    and OBU fragments can only be rejoined knowing where packets began, so each is kept whole behind its length."""
    return leb128(len(payload)) + payload


def unframe_payloads(data: bytes) -> list[bytes]:
    pos, out = 0, []
    while pos < len(data):
        size, pos = read_leb128(data, pos)
        out.append(data[pos:pos + size])
        pos += size
    return out


class Av1Encoder(Encoder):
    """aiortc's encoder for AV1: pack() packetizes pre-encoded packets (RoomEncoder "av1"); encode() lets an
    ordinary track of av.VideoFrame-s send AV1 too (libsvtav1 through RoomEncoder, at a fixed bitrate: a rate
    change reopens RoomEncoder with a keyframe, too costly to follow each REMB estimate)."""

    def __init__(self, bitrate: int = 1_000_000, fps: float = 30.0) -> None:
        self.bitrate, self.fps = bitrate, fps
        self._encoder = None

    def encode(self, frame: av.VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        from worldlab.transport.encoder import RoomEncoder

        if self._encoder is None:
            self._encoder = RoomEncoder("av1", fps=self.fps)
        pts = convert_timebase(frame.pts or 0, frame.time_base or fractions.Fraction(1, round(self.fps)),
                               VIDEO_TIME_BASE)
        packet = self._encoder.encode(frame.to_ndarray(format="rgb24"), pts, self.bitrate, force_keyframe)
        return ([], pts) if packet is None else self.pack(packet)

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        timestamp = convert_timebase(packet.pts, packet.time_base, VIDEO_TIME_BASE)
        return packetize(bytes(packet)), timestamp


class Av1Decoder(Decoder):
    """aiortc's decoder for AV1 (libdav1d, one thread: a frame out for each temporal unit in, no delay)."""

    def __init__(self) -> None:
        self.codec = av.CodecContext.create("libdav1d", "r")
        self.codec.thread_count = 1

    def decode(self, encoded_frame: JitterFrame) -> list[av.VideoFrame]:
        try:
            data = depacketize(unframe_payloads(encoded_frame.data))
        except ValueError as exc:
            # an FFmpegError is what aiortc's decoder thread survives, and it answers it with a PLI
            raise av.error.InvalidDataError(errno.EINVAL, f"bad AV1 RTP payload: {exc}") from exc
        packet = av.Packet(data)
        packet.pts, packet.time_base = encoded_frame.timestamp, VIDEO_TIME_BASE
        return list(self.codec.decode(packet))


_registered = False


def _is_av1(codec) -> bool:
    return codec.mimeType.lower() == MIME.lower()


def _or_av1(original: Callable, av1: Callable) -> Callable:
    def choose(codec, *args):
        return av1(*args) if _is_av1(codec) else original(codec, *args)
    return choose


def _or_same_profile(original: Callable) -> Callable:
    def compatible(a, b) -> bool:
        if _is_av1(a) and _is_av1(b):
            profile = lambda c: int(c.parameters.get("profile", 0))  # noqa: E731  (absent means 0: the spec)
            return a.clockRate == b.clockRate and profile(a) == profile(b)
        return original(a, b)
    return compatible


def register() -> None:
    """Teach aiortc AV1 (idempotent): offered and answered after its own video codecs, at payload type 45 with
    RTX at 46, packed by Av1Encoder, decoded by Av1Decoder. Call before creating RTCPeerConnection-s."""
    global _registered
    if _registered:
        return
    import aiortc.codecs
    import aiortc.rtcpeerconnection
    import aiortc.rtcrtpreceiver
    import aiortc.rtcrtpsender
    import aiortc.rtp

    # aiortc has no AV1: add it to the video codecs it offers, answers and reports in getCapabilities.
    aiortc.codecs.CODECS["video"] += [AV1_CODEC, AV1_RTX]
    # aiortc has no AV1 encoder; the sender calls the get_encoder it imported into its own module.
    aiortc.rtcrtpsender.get_encoder = aiortc.codecs.get_encoder = _or_av1(aiortc.codecs.get_encoder, Av1Encoder)
    # aiortc has no AV1 decoder; the receiver calls the get_decoder it imported into its own module.
    aiortc.rtcrtpreceiver.get_decoder = aiortc.codecs.get_decoder = _or_av1(aiortc.codecs.get_decoder, Av1Decoder)
    # aiortc has no AV1 depayloader (it would pass payloads through, losing where packets began).
    aiortc.rtcrtpreceiver.depayload = aiortc.codecs.depayload = _or_av1(aiortc.codecs.depayload, frame_payload)
    # aiortc matches codecs by name and clock rate only: AV1 profile 1 (4:4:4, Chromium's 47) is not what we send.
    aiortc.rtcpeerconnection.is_codec_compatible = _or_same_profile(aiortc.rtcpeerconnection.is_codec_compatible)
    # Chromium offers AV1 at 45 (its dynamic types run over 35-63 too); aiortc adopts a remote payload type only
    # inside 96-127 and else answers with its own, which need not be the one the offer gave AV1.
    aiortc.rtp.DYNAMIC_PAYLOAD_TYPES = frozenset(range(35, 64)) | frozenset(range(96, 128))
    _registered = True
