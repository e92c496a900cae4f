"""The playout-delay extension: negotiated when the offer carries it, written as min = max = 0 on every
packet of such a sender, and absent (packets unchanged) when it was not negotiated."""

from aiortc import rtp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

from worldlab.transport import playout_delay


def extensions(map_, values):
    return rtp.unpack_header_extensions(*map_.set(values))


def test_each_packet_asks_for_zero_playout_delay_once_negotiated():
    assert playout_delay.enable() and playout_delay.enable()  # idempotent
    from aiortc.codecs import HEADER_EXTENSIONS

    assert [e.uri for e in HEADER_EXTENSIONS["video"]].count(playout_delay.URI) == 1
    values = rtp.HeaderExtensions()
    values.mid = "0"
    negotiated = rtp.HeaderExtensionsMap()
    negotiated.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=9, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=5, uri=playout_delay.URI)]))
    assert extensions(negotiated, values) == [(9, b"0"), (5, b"\x00\x00\x00")]
    plain = rtp.HeaderExtensionsMap()
    plain.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=9, uri="urn:ietf:params:rtp-hdrext:sdes:mid")]))
    assert extensions(plain, values) == [(9, b"0")]
