"""Chromium receives AV1 from aiortc: the page offers a recvonly video transceiver that accepts AV1 only (at
Chromium's payload types 45/47), an in-process aiortc peer (worldlab.transport.av1.register()) answers with a
track of RoomEncoder "av1" packets, and the page decodes them (getStats) into the colour that was sent."""

import asyncio

import numpy as np
import pytest

from worldlab.transport.client import local_peer_connection

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, have_chromium

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium")]
COLOR = (200, 60, 40)
SIZE = 128
FRAMES = 30

# The page's side: a recvonly transceiver preferring AV1 only, its offer once ICE gathering is complete (no
# trickle: the aiortc peer takes the whole offer at once), and the remote track shown in a <video>.
OFFER_JS = """async () => {
  const av1 = RTCRtpReceiver.getCapabilities('video').codecs.filter(c => c.mimeType.toLowerCase() === 'video/av1');
  const pc = new RTCPeerConnection();
  window.pc = pc;
  const tr = pc.addTransceiver('video', {direction: 'recvonly'});
  tr.setCodecPreferences(av1);
  pc.ontrack = (e) => { const v = document.getElementById('v'); v.srcObject = new MediaStream([e.track]); v.play(); };
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise(r => pc.addEventListener('icegatheringstatechange',
                                               () => pc.iceGatheringState === 'complete' && r()));
  }
  return pc.localDescription.sdp;
}"""

STATS_JS = """async () => {
  const stats = await window.pc.getStats();
  let inbound = null;
  stats.forEach(r => { if (r.type === 'inbound-rtp' && r.kind === 'video') inbound = r; });
  if (!inbound) return null;
  const codec = inbound.codecId ? stats.get(inbound.codecId) : null;
  return {framesDecoded: inbound.framesDecoded || 0, codec: codec ? codec.mimeType : null,
          payloadType: codec ? codec.payloadType : null, width: inbound.frameWidth || 0,
          decoder: inbound.decoderImplementation || null};
}"""

# The middle of the shown picture (away from any edge ringing), read back through a canvas.
PIXELS_JS = """() => {
  const v = document.getElementById('v');
  const c = document.createElement('canvas'); c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d'); g.drawImage(v, 0, 0);
  const q = Math.floor(c.width / 4);
  const d = g.getImageData(q, q, 2 * q, 2 * q).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
  const n = d.length / 4;
  return [sum[0] / n, sum[1] / n, sum[2] / n, v.videoWidth, v.videoHeight];
}"""


def packet_track():
    """Like RoomTrack: RoomEncoder "av1" packets of one solid colour at 30 fps, pts on the 90 kHz clock, and a
    keyframe whenever the receiver asks (aiortc's PLI reaches an encoder only through the track)."""
    from aiortc.mediastreams import MediaStreamTrack

    from worldlab.transport.encoder import RoomEncoder

    class Av1PacketTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self):
            super().__init__()
            self.encoder = RoomEncoder("av1", fps=30.0)
            self.frame = np.broadcast_to(np.array(COLOR, np.uint8), (SIZE, SIZE, 3)).copy()
            self.n = 0

        async def recv(self):
            await asyncio.sleep(1 / 30)
            # a keyframe each second too: Chromium may drop the first ones while its decoder is being set up
            packet = await asyncio.get_running_loop().run_in_executor(
                None, self.encoder.encode, self.frame, self.n * 3000, 400_000, self.n % 30 == 0)
            self.n += 1
            return packet

    return Av1PacketTrack()


@pytest.mark.timeout(120)
async def test_chromium_decodes_av1_sent_by_aiortc():
    from aiortc import RTCSessionDescription
    from playwright.async_api import async_playwright

    from worldlab.transport import av1

    av1.register()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pc = local_peer_connection()
        try:
            page = await browser.new_page()
            await page.set_content("<video id=v autoplay muted playsinline></video>")
            can = await page.evaluate("RTCRtpReceiver.getCapabilities('video').codecs"
                                      ".filter(c => c.mimeType.toLowerCase() === 'video/av1').length")
            if not can:
                pytest.skip("this Chromium cannot decode AV1: RTCRtpReceiver.getCapabilities('video') has no video/AV1")
            offer = await page.evaluate(OFFER_JS)
            assert "a=rtpmap:45 AV1/90000" in offer and "VP8" not in offer  # AV1 only, at Chromium's type

            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            track = packet_track()
            pc.addTrack(track)
            await pc.setLocalDescription(await pc.createAnswer())
            answer = pc.localDescription.sdp
            # the offer's payload type kept (outside 96-127), profile 1 at 47 declined: we send profile 0
            assert "a=rtpmap:45 AV1/90000" in answer and "a=rtpmap:47" not in answer
            await page.evaluate("(sdp) => window.pc.setRemoteDescription({type: 'answer', sdp})", answer)

            stats = None
            for _ in range(300):  # up to 30 s
                stats = await page.evaluate(STATS_JS)
                if stats and stats["framesDecoded"] >= FRAMES:
                    break
                await asyncio.sleep(0.1)
            print("chromium inbound-rtp:", stats, "packets sent:", track.n)
            assert stats and stats["framesDecoded"] >= FRAMES, f"Chromium decoded too few AV1 frames: {stats}"
            assert stats["codec"] == "video/AV1" and stats["payloadType"] == 45
            assert stats["width"] == SIZE

            await page.wait_for_function("document.getElementById('v').videoWidth > 0", timeout=10000)
            *mean, width, height = await page.evaluate(PIXELS_JS)
            print("shown picture", (width, height), "mean colour", np.round(mean, 1), "sent", COLOR)
            assert (width, height) == (SIZE, SIZE)
            # 4:2:0 chroma, the RGB <-> YUV matrices of the encoder and of Chromium's renderer, and lossy coding
            # move a solid colour by a few levels; 24 per channel still tells it apart from any other colour.
            assert np.abs(np.array(mean) - COLOR).max() <= 24
        finally:
            await pc.close()
            await browser.close()
