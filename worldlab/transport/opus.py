"""Opus at low delay for the sound track: libopus's restricted-low-delay mode (2.5 ms look-ahead) instead of
aiortc's VoIP mode (6.5 ms); 20 ms frames (10 ms ones made Chrome's jitter buffer hold 67-117 ms instead of 40).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
FRAME_MS = 20  # libopus frame_duration = aiortc's frame size (its resampler cuts 960-sample frames)
APPLICATION = "lowdelay"  # restricted low delay: no speech/voice modes, the shortest look-ahead


def enable() -> bool:
    """Set up every aiortc Opus encoder made from now on in this process (once; idempotent). False (with a
    warning) when aiortc's encoder is not the shape this expects: it then keeps its defaults."""
    try:
        from aiortc.codecs import opus

        orig = opus.OpusEncoder.__init__
    except (ImportError, AttributeError):
        log.warning("cannot set aiortc's Opus encoder to low delay; audio keeps 20 ms frames")
        return False
    if getattr(orig, "_worldlab_low_delay", False):
        return True
    if opus.SAMPLES_PER_FRAME != opus.SAMPLE_RATE * FRAME_MS // 1000:  # its resampler cuts the frames
        log.warning("aiortc's Opus frames are not %d ms; audio keeps its defaults", FRAME_MS)
        return False

    def __init__(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        self.codec.options = {**dict(self.codec.options), "application": APPLICATION, "frame_duration": str(FRAME_MS)}

    __init__._worldlab_low_delay = True
    opus.OpusEncoder.__init__ = __init__
    return True
