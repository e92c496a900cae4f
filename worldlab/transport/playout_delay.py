"""The RTP playout-delay header extension (min = max = 0) on every video packet: tells Chrome to render each
frame as soon as it is decoded instead of holding it in its jitter buffer, as cloud-gaming streams do.

aiortc neither negotiates nor writes this extension (its HeaderExtensionsMap knows a fixed list), so
`enable()` adds the URI to aiortc's video header extensions (negotiated only when the browser offers it:
Chrome does) and wraps HeaderExtensionsMap so a sender that negotiated it writes the 3 bytes on each packet.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
LOCAL_ID = 6  # our id in an offer we make; in an answer the browser's id is used
ZERO_DELAY = b"\x00\x00\x00"  # 12-bit min, 12-bit max, in 10 ms units: render immediately
_enabled = False


def enable() -> bool:
    """Idempotent; False (and a warning) if aiortc's internals are not what this was written against."""
    global _enabled
    if _enabled:
        return True
    try:
        from aiortc import codecs, rtp
        from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters

        video = codecs.HEADER_EXTENSIONS["video"]
        configure, pack = rtp.HeaderExtensionsMap.configure, rtp.HeaderExtensionsMap.set
    except (ImportError, AttributeError, KeyError):
        log.warning("this aiortc cannot carry the playout-delay extension; Chrome keeps its default delay")
        return False
    if all(ext.uri != URI for ext in video):
        video.append(RTCRtpHeaderExtensionParameters(id=LOCAL_ID, uri=URI))

    def configure_with_delay(self, parameters) -> None:
        configure(self, parameters)
        self.playout_delay_id = next((ext.id for ext in parameters.headerExtensions if ext.uri == URI), None)

    def set_with_delay(self, values):
        profile, data = pack(self, values)
        ext_id = getattr(self, "playout_delay_id", None)
        if ext_id is None:
            return profile, data
        return rtp.pack_header_extensions([*rtp.unpack_header_extensions(profile, data), (ext_id, ZERO_DELAY)])

    rtp.HeaderExtensionsMap.configure = configure_with_delay
    rtp.HeaderExtensionsMap.set = set_with_delay
    _enabled = True
    return True
