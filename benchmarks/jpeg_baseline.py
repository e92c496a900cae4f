"""The comparison peers' demos use: JPEG frames over a WebSocket, same engine, same pacing.

Binary message = 8-byte header (frame id, acked seq) + JPEG. The page measures glass-to-glass the same way
(key event -> paint of the first frame whose id >= the acking frame) and bytes per second.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time

from aiohttp import web
from PIL import Image

from worldlab.engine import Scheduler, Session
from worldlab.model import start_session

PAGE = """<!doctype html><html><body style="background:#111">
<canvas id="c" width="256" height="256"></canvas>
<script>
const c = document.getElementById('c'), g = c.getContext('2d');
const ws = new WebSocket(`ws://${location.host}/ws`); ws.binaryType = 'arraybuffer';
const st = {frames: 0, bytes: 0, g2g: [], t0: null, pending: new Map(), seq: 0};
window.jpeg = st;
ws.onmessage = async (e) => {
  const dv = new DataView(e.data), fid = dv.getUint32(0), acked = dv.getInt32(4);
  st.bytes += e.data.byteLength;
  const bmp = await createImageBitmap(new Blob([e.data.slice(8)], {type: 'image/jpeg'}));
  requestAnimationFrame((t) => {
    g.imageSmoothingEnabled = false; g.drawImage(bmp, 0, 0, 256, 256);
    st.frames++; if (st.t0 === null) st.t0 = t;
    for (const [s, p] of st.pending) { if (s <= acked && p.fid === null) p.fid = fid; }
    for (const [s, p] of st.pending) { if (p.fid !== null && fid >= p.fid) { st.g2g.push(t - p.t); st.pending.delete(s); } }
  });
};
window.press = (keys, t) => { const s = ++st.seq; st.pending.set(s, {t, fid: null});
  ws.send(JSON.stringify({seq: s, keys})); };
document.addEventListener('keydown', (e) => { const k = {ArrowUp:'up',ArrowDown:'down',ArrowLeft:'left',ArrowRight:'right'}[e.key]; if (k) press([k], e.timeStamp); });
document.addEventListener('keyup', (e) => { if (e.key.startsWith('Arrow')) press([], e.timeStamp); });
</script></body></html>"""


def build_jpeg_app(model, fps: float = 30.0, quality: int = 80) -> web.Application:
    sched = Scheduler(model)
    app = web.Application()

    async def page(request):
        return web.Response(text=PAGE, content_type="text/html")

    async def ws_handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(None, start_session, model, "a walk in the forest", 0)
        session = Session(state, "forest", fps_target=fps)
        sched.add(session)
        acked = {"seq": -1}

        async def pump():
            next_at = time.monotonic()
            while not ws.closed:
                next_at += 1.0 / fps
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                frame, meta, _ = session.slot.take()
                if frame is None:
                    continue
                for seq, _fid in session.pop_acks():
                    acked["seq"] = max(acked["seq"], seq)
                big = Image.fromarray(frame.repeat(4, 0).repeat(4, 1))
                buf = io.BytesIO()
                await loop.run_in_executor(None, lambda: big.save(buf, "JPEG", quality=quality))
                await ws.send_bytes(struct.pack(">Ii", meta.frame_id, acked["seq"]) + buf.getvalue())

        task = asyncio.ensure_future(pump())
        async for msg in ws:
            body = json.loads(msg.data)
            session.set_action(body["keys"], int(body["seq"]))
        task.cancel()
        sched.remove(session)
        return ws

    app.router.add_get("/", page)
    app.router.add_get("/ws", ws_handler)
    app.on_startup.append(lambda app: asyncio.sleep(0, sched.start()))
    app.on_shutdown.append(lambda app: asyncio.sleep(0, sched.stop()))
    return app
