"""The video codec is chosen per session: the offer names it (or takes the server's default), the answer
negotiates only it, a codec the offer lacks is refused in one line, and spectators get the room's codec."""

import re

import pytest

from worldlab.engine import Scheduler
from worldlab.engine.oracle import EnvOracle
from worldlab.transport.client import PeerClient
from worldlab.transport.peer import PeerHub
from worldlab.transport.rooms import OfferError


def _video_codecs(sdp: str) -> set[str]:
    video = re.search(r"^m=video .*?(?=^m=|\Z)", sdp, re.MULTILINE | re.DOTALL).group(0)
    names = set(re.findall(r"^a=rtpmap:\d+ ([A-Za-z0-9-]+)/", video, re.MULTILINE))
    return names - {"rtx"}


def _without(sdp: str, name: str) -> str:
    """The offer as from a browser that cannot decode `name`: its payload types and their lines removed."""
    pts = set(re.findall(rf"^a=rtpmap:(\d+) {name}/", sdp, re.MULTILINE))
    rtx = {m[0] for m in re.findall(r"^a=fmtp:(\d+) apt=(\d+)", sdp, re.MULTILINE) if m[1] in pts}
    gone = pts | rtx
    lines = [ln for ln in sdp.split("\r\n") if not re.match(r"^a=(rtpmap|fmtp|rtcp-fb):(\d+)", ln)
             or re.match(r"^a=(?:rtpmap|fmtp|rtcp-fb):(\d+)", ln).group(1) not in gone]
    return "\r\n".join(ln if not ln.startswith("m=video") else
                       " ".join(p for p in ln.split(" ") if p not in gone) for ln in lines)


@pytest.fixture
async def hub():
    model = EnvOracle(seed=2)
    sched = Scheduler(model).start()
    h = PeerHub(model, sched, fps=30.0, codec="vp8")
    yield h
    await h.close()
    sched.stop()
    assert not h.pcs and not h.rooms


@pytest.mark.timeout(60)
async def test_the_offer_chooses_h264_over_the_default_and_frames_arrive(hub):
    client = PeerClient()
    try:
        ans = await client.connect(hub, codec="h264", room="r1")
        assert ans["codec"] == "h264" and _video_codecs(ans["sdp"]) == {"H264"}
        await client.wait_for(lambda: len(client.frames) >= 5)
        assert client.frames[-1].shape[2] == 3
        assert hub.rooms["r1"].stats()["codec"] == "h264"
        viewer = PeerClient()
        with pytest.raises(OfferError) as exc:  # a spectator cannot ask for another codec than the room's
            await viewer.connect(hub, room="r1", role="viewer", codec="vp8")
        assert (exc.value.status, exc.value.code) == (409, "codec_mismatch")
        ans2 = await viewer.connect(hub, room="r1", role="viewer")  # no codec: the room's
        assert ans2["codec"] == "h264" and _video_codecs(ans2["sdp"]) == {"H264"}
        await viewer.wait_for(lambda: len(viewer.frames) >= 3)
        await viewer.close()
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_without_a_codec_the_default_is_negotiated(hub):
    client = PeerClient()
    try:
        ans = await client.connect(hub)
        assert ans["codec"] == "vp8" and _video_codecs(ans["sdp"]) == {"VP8"}
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_a_codec_the_offer_lacks_or_an_unknown_one_is_refused_and_leaves_nothing(hub):
    client = PeerClient()
    try:
        sdp = await client.offer_sdp()
        assert "H264" in _video_codecs(sdp)
        with pytest.raises(OfferError) as exc:
            await hub.offer(_without(sdp, "H264"), "offer", codec="h264")
        assert (exc.value.status, exc.value.code) == (400, "codec_not_offered")
        assert "no H264" in str(exc.value)
        with pytest.raises(OfferError) as exc:
            await hub.offer(sdp, "offer", codec="theora")
        assert (exc.value.status, exc.value.code) == (400, "bad_codec")
        assert not hub.rooms and not hub.pcs
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_av1_is_negotiated_and_decoded_when_asked_for(hub):
    """AV1 (aiortc has none: worldlab.transport.av1) end to end in process: the answer is AV1 only, frames
    decode at the client with libdav1d, and the triage of the room records the codec."""
    client = PeerClient()
    try:
        ans = await client.connect(hub, codec="av1", room="a1")
        assert ans["codec"] == "av1" and _video_codecs(ans["sdp"]) == {"AV1"}
        await client.wait_for(lambda: len(client.frames) >= 5)
        assert client.frames[-1].shape[0] >= 128 and hub.rooms["a1"].stats()["codec"] == "av1"
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_a_default_the_browser_cannot_decode_falls_back_instead_of_failing():
    """`serve --codec av1` and a browser without AV1 (its offer lacks it) that names no codec: H.264, not an
    unnegotiable answer. A browser that offers AV1 gets the default."""
    model = EnvOracle(seed=2)
    sched = Scheduler(model).start()
    hub = PeerHub(model, sched, fps=30.0, codec="av1")
    plain, av1_ok = PeerClient(), PeerClient()
    try:
        ans = await plain.accept(await hub.offer(_without(await plain.offer_sdp(), "AV1"), "offer"))
        assert ans["codec"] == "h264" and _video_codecs(ans["sdp"]) == {"H264"}
        ans = await av1_ok.connect(hub)
        assert ans["codec"] == "av1"
    finally:
        await plain.close()
        await av1_ok.close()
        await hub.close()
        sched.stop()
