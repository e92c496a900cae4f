"""Per-stage latency of a real live session, measured headless: Scheduler + PeerHub + an in-process
aiortc client in one event loop, a scripted player holding and changing keys; plus the budget plots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import threading
import time

import numpy as np
import xarray as xr

from worldlab.config import SessionConfig, Toggles
from worldlab.engine.metrics import percentile
from worldlab.experiments.provenance import now, provenance
from worldlab.model.registry import resolve
from worldlab.transport.protocol import QUALITY

# The seed's budget in pipeline order: input capture, frame generation (queue_ms + model_ms share it), encode,
# network (a round trip), decode/display; BUDGET_TOTAL_MS bounds g2g (measure_latency's docstring).
BUDGET_MS = {"capture_ms": (20.0, 40.0), "model_ms": (16.0, 33.0), "encode_ms": (8.0, 20.0),
             "rtt_ms": (60.0, 120.0), "decode_ms": (20.0, 40.0)}
BUDGET_TOTAL_MS = 400.0
STAGES = ("capture_ms", "queue_ms", "model_ms", "encode_ms", "rtt_ms", "decode_ms", "g2g_ms")
QUANTILES = (50, 95, 99)
HELD_KEYS = ((), ("right",), ("left",), ("up",), ("down",), ("up", "right"), ("down", "left"))
PING_INTERVAL_S = 0.5
DWELL_S = (0.15, 0.45)  # how long the scripted player holds one key set
_measuring = threading.Lock()  # the decoder hook is process-wide: one measurement at a time


def measure_latency(model_name: str = "tiny", seconds: float = 5.0, toggles: Toggles = Toggles(), *,
                    checkpoint=None, prompt: str = "a walk in the forest", quality: str = "auto",
                    codec: str = "vp8", fps_target: float = SessionConfig.fps_target, seed: int = 0,
                    warmup_s: float = 0.5) -> xr.Dataset:
    """Play a live session for `seconds` (after `warmup_s` of streaming) and return the Dataset.

    Stages (all times from one monotonic clock, the client and server share the process):
    - capture_ms: the player's input event (the script deciding the new held keys) -> the `action` message
      handed to the data channel. A headless client has no keyboard, OS event queue or page, so this is only
      the serialize-and-send cost, ~0.01 ms; a browser measures key event -> send instead (docs/streaming.md).
    - queue_ms: the action's arrival at the server session -> start of the scheduler tick that applied it
      (read from the session's frame log for the acked frame; it waits for the next 1/fps grid instant).
    - model_ms: the world-model step that produced each frame (per model frame; batched ticks give each
      session the batch's step time).
    - encode_ms: the room encoder's encode call for each sent frame (VP8/H.264 codec time, in its thread).
    - rtt_ms: `ping` -> `pong` round trip on the ctl data channel (SCTP over DTLS over ICE/UDP, loopback).
    - decode_ms: the client's video decoder (aiortc's decoder thread) per decoded frame.
    - g2g_ms: input event -> the client application receiving (from track.recv) the first decoded frame whose
      frame_id is >= the frame the server acked for that action, i.e. the first frame that reflects it.
      Decoded frames are mapped to frame ids as the page does: RTP timestamp = random origin + pts, the origin
      found by voting against the `frame` {frame_id, pts} messages. There is no display step headless.
    - transit_ms (extra, not a budget stage): encode done -> decoded at the client, per decoded frame. It
      holds packetization, the network leg and aiortc's receive jitter buffer, which releases a frame only
      when the next frame's first packet arrives (about one frame period; Chromium with
      jitterBufferTarget 0 does not wait), which is why g2g exceeds the sum of the stages.
    - fps_actual (per second): distinct new frame ids first received by the client in that second (repeated
      frames do not count, as in the metric dictionary); fps_target is the session's pacing rate.

    BUDGET_MS maps the seed's budget "20–40 / 16–33 / 8–20 / 60–120 / 20–40 ms, sub-400 ms total" onto
    the stages in the order of the pipeline: input capture, frame generation (one frame period at 60-30 fps,
    which queue_ms + model_ms share), encode, network (a round trip, rtt_ms), decode/display; BUDGET_TOTAL_MS
    bounds g2g. Stacked percentiles in `latency_plots` add per-stage percentiles (a sum of p95s is not the
    p95 of the sum); the measured g2g is drawn beside them as the true end to end.

    Runs its own event loop; inside a running loop (a Jupyter kernel) it runs that loop in a thread.
    """
    _check_args(model_name, seconds, toggles, quality, warmup_s)
    kw = dict(checkpoint=checkpoint, prompt=prompt, quality=quality, codec=codec, fps_target=fps_target,
              seed=seed, warmup_s=warmup_s)
    coro = lambda: measure_latency_async(model_name, seconds, toggles, **kw)  # noqa: E731
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro())
    box = {}

    def run():
        try:
            box["ds"] = asyncio.run(coro())
        except BaseException as exc:  # re-raised in the caller's thread
            box["err"] = exc

    t = threading.Thread(target=run, name="worldlab-latency")
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["ds"]


def _check_args(model_name, seconds, toggles, quality, warmup_s) -> None:
    """One clear ValueError before anything loads: the model (worldlab.model.registry: a name, checkpoint
    file or module:factory) and whether it supports the toggles, then the other arguments."""
    if not isinstance(toggles, Toggles):
        raise ValueError(f"toggles must be a worldlab.config.Toggles, got {type(toggles).__name__}")
    resolve(model_name).check(toggles)
    if not (isinstance(seconds, int | float) and 0.5 <= seconds <= 600):
        raise ValueError(f"seconds must be a number in [0.5, 600], got {seconds!r}")
    if quality not in QUALITY:
        raise ValueError(f"quality must be one of {QUALITY}, got {quality!r}")
    if not 0 <= warmup_s <= 10:
        raise ValueError(f"warmup_s must be in [0, 10], got {warmup_s!r}")


def _load(model_name, toggles, checkpoint):
    return resolve(model_name).build(toggles, checkpoint=checkpoint)


async def measure_latency_async(model_name: str = "tiny", seconds: float = 5.0, toggles: Toggles = Toggles(),
                                *, checkpoint=None, prompt: str = "a walk in the forest", quality: str = "auto",
                                codec: str = "vp8", fps_target: float = SessionConfig.fps_target, seed: int = 0,
                                warmup_s: float = 0.5) -> xr.Dataset:
    from worldlab.engine import Scheduler
    from worldlab.transport.peer import PeerHub

    _check_args(model_name, seconds, toggles, quality, warmup_s)
    if not _measuring.acquire(blocking=False):
        raise ValueError("another latency measurement is running in this process")
    try:
        started_at = now()
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, _load, model_name, toggles, checkpoint)
        sched = Scheduler(model).start()
        hub = PeerHub(model, sched, codec=codec, fps=fps_target)
        probe = _Probe()
        try:
            with _timed_decoder(probe.decoded):
                rec = await _play(hub, probe, prompt, quality, seconds, warmup_s, seed)
        finally:
            await probe.pc.close()
            await hub.close()
            sched.stop()
        ds = _dataset(rec, probe, fps_target)
    finally:
        _measuring.release()
    ds = ds.assign_coords(toggles.to_dict())
    weights_file = getattr(model, "checkpoint_path", None)  # None: a model without weights (the oracle)
    ds.attrs.update(provenance(weights_file, started_at=started_at))
    if weights_file is None:
        ds.attrs["checkpoint_sha256"] = "none"
    ds.attrs.update({"model": model_name, "seconds": float(seconds), "warmup_s": float(warmup_s),
                     "prompt": prompt, "quality": quality, "codec": codec, "player_seed": int(seed),
                     "budget_ms": json.dumps(BUDGET_MS), "budget_total_ms": BUDGET_TOTAL_MS})
    return ds


# -- the headless player ---------------------------------------------------------------------------
class _Probe:
    """An aiortc client that records every message, received frame and decode with its arrival time."""

    def __init__(self):
        from worldlab.transport.client import local_peer_connection

        self.pc = local_peer_connection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.ch = self.pc.createDataChannel("ctl", ordered=True)
        self.opened = asyncio.Event()
        self.ch.on("open", self.opened.set)
        self.ch.on("message", self._on_message)
        self.seq = 0
        self.frames_msg: list[tuple[int, int]] = []  # (frame_id, pts)
        self.acks: list[tuple[float, int, int]] = []  # (t, seq, frame_id)
        self.pongs: list[tuple[float, float]] = []  # (t received, t sent)
        self.received: list[tuple[float, int]] = []  # (t, rtp timestamp) per frame out of track.recv()
        self.decoded: list[tuple[int, float, float]] = []  # (rtp timestamp, t done, decode ms)
        self.pc.on("track", lambda track: asyncio.ensure_future(self._pull(track)))

    def _on_message(self, raw) -> None:
        t, m = time.monotonic(), json.loads(raw)
        if m["type"] == "frame":
            self.frames_msg.append((m["frame_id"], m["pts"]))
        elif m["type"] == "ack":
            self.acks.append((t, m["seq"], m["frame_id"]))
        elif m["type"] == "pong":
            self.pongs.append((t, m["t"]))

    async def _pull(self, track) -> None:
        while True:
            try:
                f = await track.recv()
            except Exception:  # the track ended (MediaStreamError) or the peer closed
                return
            self.received.append((time.monotonic(), int(f.pts)))

    def send(self, **m) -> int:
        self.seq += 1
        self.ch.send(json.dumps({"v": 1, "seq": self.seq, **m}))
        return self.seq


@contextlib.contextmanager
def _timed_decoder(log: list):
    """Time aiortc's receiver decoder (it runs in aiortc's decoder thread; the server side never decodes)."""
    import aiortc.rtcrtpreceiver as receiver

    original = receiver.get_decoder

    class Timed:
        def __init__(self, inner):
            self.inner = inner

        def decode(self, encoded_frame):
            t0 = time.monotonic()
            frames = self.inner.decode(encoded_frame)
            t1 = time.monotonic()
            if frames:
                log.append((int(encoded_frame.timestamp), t1, (t1 - t0) * 1000))
            return frames

    receiver.get_decoder = lambda codec: Timed(original(codec))
    try:
        yield
    finally:
        receiver.get_decoder = original


async def _play(hub, probe, prompt, quality, seconds, warmup_s, seed) -> dict:
    """Connect, warm up, then hold/change keys and ping for `seconds`; the server side is instrumented."""
    from aiortc import RTCSessionDescription

    t_offer = time.monotonic()
    await probe.pc.setLocalDescription(await probe.pc.createOffer())
    ans = await hub.offer(probe.pc.localDescription.sdp, probe.pc.localDescription.type, prompt=prompt,
                          quality=quality)
    room = hub.rooms[ans["room"]]
    session, encoder = room.session, room.track.encoder
    session.frame_log = []
    encoded = _time_encoder(encoder)
    await probe.pc.setRemoteDescription(RTCSessionDescription(ans["sdp"], ans["type"]))
    await asyncio.wait_for(probe.opened.wait(), 10)
    await _until(lambda: probe.received, 15, "no video frame reached the client")
    first_frame_ms = (probe.received[0][0] - t_offer) * 1000
    await asyncio.sleep(warmup_s)

    rng = random.Random(seed)
    actions = []  # (seq, keys, t_event, t_sent)
    held: tuple = ()
    slot0 = (session.slot.produced, session.slot.dropped)
    t0 = time.monotonic()
    t_end, next_ping = t0 + seconds, t0
    next_key = t0 + rng.uniform(*DWELL_S) / 2
    while (t := time.monotonic()) < t_end:
        if t >= next_ping:
            probe.send(type="ping", t=time.monotonic() * 1000)
            next_ping += PING_INTERVAL_S
        if t >= next_key:
            held = rng.choice([k for k in HELD_KEYS if k != held])
            t_event = time.monotonic()
            seq = probe.send(type="action", keys=list(held), t=t_event * 1000)
            actions.append((seq, held, t_event, time.monotonic()))
            next_key = t_event + rng.uniform(*DWELL_S)
        await asyncio.sleep(max(0.0, min(next_ping, next_key, t_end) - time.monotonic()))
    t1 = time.monotonic()
    slot1 = (session.slot.produced, session.slot.dropped)
    # Let the last actions' frames and the last pong arrive before the session is torn down.
    last_seq = actions[-1][0] if actions else 0
    with contextlib.suppress(asyncio.TimeoutError):
        await _until(lambda: any(s >= last_seq for _t, s, _f in probe.acks), 2.0)
    await asyncio.sleep(0.3)
    return {"t0": t0, "t1": t1, "actions": actions, "frame_log": list(session.frame_log), "encoded": list(encoded),
            "produced": slot1[0] - slot0[0], "dropped": slot1[1] - slot0[1], "first_frame_ms": first_frame_ms,
            "kv_bytes": int(room.model.kv_bytes(session.state)), "rung": room.track.rung,
            "fps_target": session.fps_target}


def _time_encoder(encoder) -> list:
    """Wrap this room's encoder instance: (t done, pts, ms, bytes) per encoded frame."""
    log, inner = [], encoder.encode

    def encode(rgb, pts, bitrate, force_keyframe=False):
        t0 = time.monotonic()
        packet = inner(rgb, pts, bitrate, force_keyframe)
        t1 = time.monotonic()
        log.append((t1, int(pts), (t1 - t0) * 1000, 0 if packet is None else packet.size))
        return packet

    encoder.encode = encode
    return log


async def _until(pred, timeout: float, message: str | None = None) -> None:
    async def poll():
        while not pred():
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        if message is None:
            raise
        raise RuntimeError(f"latency measurement failed: {message} within {timeout:.0f} s") from None


# -- from records to the Dataset --------------------------------------------------------------------
def rtp_origin(rtp: np.ndarray, pts: np.ndarray) -> int:
    """The one 32-bit shift that maps received RTP timestamps onto sent pts (most votes wins, as the page).

    The pts carry real-time jitter, so only the true origin keeps matching frame after frame.
    """
    if not len(rtp) or not len(pts):
        raise RuntimeError("latency measurement failed: no frames to map RTP timestamps to frame ids")
    cand = ((rtp.astype(np.int64)[:, None] - pts.astype(np.int64)[None, :]) % 2**32).ravel()
    values, counts = np.unique(cand, return_counts=True)
    best = int(np.argmax(counts))
    if counts[best] < 0.5 * len(rtp):
        raise RuntimeError(f"latency measurement failed: no RTP origin matches most frames "
                           f"({counts[best]} of {len(rtp)})")
    return int(values[best])


def _dataset(rec: dict, probe: _Probe, fps_target: float) -> xr.Dataset:
    t0, t1 = rec["t0"], rec["t1"]
    rel = lambda t: np.asarray(t, dtype=np.float64) - t0  # noqa: E731  (seconds since the window opened)
    inside = lambda t: t0 <= t <= t1  # noqa: E731

    pts_to_fid = {pts: fid for fid, pts in probe.frames_msg}
    recv_rtp = np.array([r for _t, r in probe.received], dtype=np.int64)
    origin = rtp_origin(recv_rtp, np.array(list(pts_to_fid), dtype=np.int64))
    received = [(t, pts_to_fid.get((r - origin) % 2**32)) for t, r in probe.received]
    received = [(t, fid) for t, fid in received if fid is not None]

    log = {fid: (t, model_ms, queue_ms) for t, fid, _seq, model_ms, queue_ms in rec["frame_log"]}
    g2g, capture, queue, a_t, a_seq, a_keys, a_fid = [], [], [], [], [], [], []
    for seq, keys, t_event, t_sent in rec["actions"]:
        ack = next(((t, f) for t, s, f in probe.acks if s >= seq), None)
        shown = None if ack is None else next((t for t, fid in received if fid >= ack[1] and t >= t_event), None)
        if shown is None or ack[1] not in log:
            continue  # never reflected before teardown: no sample rather than a guess
        a_seq.append(seq)
        a_t.append(t_event)
        a_keys.append("+".join(keys) or "idle")
        a_fid.append(ack[1])
        capture.append((t_sent - t_event) * 1000)
        queue.append(log[ack[1]][2])
        g2g.append((shown - t_event) * 1000)

    frames = [(fid, t, ms) for fid, (t, ms, _q) in sorted(log.items()) if inside(t)]
    enc = [e for e in rec["encoded"] if inside(e[0])]
    dec = [d for d in probe.decoded if inside(d[1])]
    encoded_at = {pts: t for t, pts, _ms, _b in rec["encoded"]}
    transit = [(d[1] - encoded_at[p]) * 1000 if (p := (d[0] - origin) % 2**32) in encoded_at else np.nan
               for d in dec]
    pings = [(t, (t - sent / 1000) * 1000) for t, sent in probe.pongs if inside(sent / 1000)]
    fps_actual, seconds_idx = _fps_per_second(received, t0, t1)

    ds = xr.Dataset(
        {
            "capture_ms": ("action", np.array(capture)),
            "queue_ms": ("action", np.array(queue)),
            "g2g_ms": ("action", np.array(g2g)),
            "model_ms": ("frame", np.array([m for _f, _t, m in frames])),
            "encode_ms": ("encoded", np.array([e[2] for e in enc])),
            "encoded_bytes": ("encoded", np.array([e[3] for e in enc], dtype=np.int64)),
            "decode_ms": ("decoded", np.array([d[2] for d in dec])),
            "transit_ms": ("decoded", np.array(transit, dtype=np.float64)),
            "rtt_ms": ("ping", np.array([r for _t, r in pings])),
            "fps_actual": ("second", fps_actual),
            "fps_target": ("second", np.full(len(seconds_idx), float(fps_target))),
        },
        coords={
            "action": np.array(a_seq, dtype=np.int64), "action_t": ("action", rel(a_t)),
            "action_keys": ("action", np.array(a_keys, dtype=str)),
            "action_frame_id": ("action", np.array(a_fid, dtype=np.int64)),
            "frame": np.array([f for f, _t, _m in frames], dtype=np.int64),
            "frame_t": ("frame", rel([t for _f, t, _m in frames])),
            "encoded": np.arange(len(enc)), "encoded_t": ("encoded", rel([e[0] for e in enc])),
            "decoded": np.arange(len(dec)), "decoded_t": ("decoded", rel([d[1] for d in dec])),
            "ping": np.arange(len(pings)), "ping_t": ("ping", rel([t for t, _r in pings])),
            "second": seconds_idx,
        },
    )
    window = t1 - t0
    for stage in (*STAGES, "transit_ms"):
        v = ds[stage].values[np.isfinite(ds[stage].values)]
        for q in QUANTILES:
            ds[f"{stage}_p{q}"] = percentile(v, q) if len(v) else float("nan")
        ds[stage].attrs["units"] = "ms"
    ds["transit_ms"].attrs.update(units="ms", long_name="encode done -> decoded at the client (packetize, "
                                  "network, receive jitter buffer, decode)")
    ds["fps_actual_mean"] = float(fps_actual.mean()) if len(fps_actual) else float("nan")
    ds["drop_pct"] = 100.0 * rec["dropped"] / rec["produced"] if rec["produced"] else 0.0
    ds["bitrate_kbps"] = float(ds["encoded_bytes"].sum()) * 8 / window / 1000
    ds["kv_bytes"] = rec["kv_bytes"]
    ds["relay_pct"] = 0.0  # loopback ICE host candidates: nothing goes through a TURN relay
    ds["first_frame_ms"] = rec["first_frame_ms"]
    ds["bitrate_kbps"].attrs["units"] = "kbit/s"
    ds.attrs.update({"window_s": round(window, 3), "rung": rec["rung"], "rtp_origin": origin,
                     "actions_sent": len(rec["actions"]), "actions_reflected": len(a_seq)})
    return ds


def _fps_per_second(received, t0: float, t1: float):
    """Distinct new frame ids first received in each whole second of the window."""
    n = max(1, int(math.floor(t1 - t0 + 1e-6)))
    first_seen, counts = set(), np.zeros(n)
    for t, fid in received:
        if fid in first_seen:
            continue
        first_seen.add(fid)
        i = int((t - t0) // 1.0)
        if 0 <= i < n:
            counts[i] += 1
    return counts, np.arange(n)


# -- plots ------------------------------------------------------------------------------------------
STACK = (("capture", ("capture_ms",), "capture_ms"), ("queue + model", ("queue_ms", "model_ms"), "model_ms"),
         ("encode", ("encode_ms",), "encode_ms"), ("network (rtt)", ("rtt_ms",), "rtt_ms"),
         ("decode", ("decode_ms",), "decode_ms"))


def budget_table(ds: xr.Dataset) -> list[tuple[str, str, float]]:
    """(bar, segment, ms) rows: measured p50 and p95 per budget segment, and the budget's two ends."""
    rows = []
    for seg, stages, budget_key in STACK:
        for q in (50, 95):
            rows.append((f"measured p{q}", seg, sum(float(ds[f"{s}_p{q}"]) for s in stages)))
        lo, hi = BUDGET_MS[budget_key]
        rows += [("budget low", seg, lo), ("budget high", seg, hi)]
    for q in (50, 95):
        rows.append((f"g2g p{q}", "g2g (end to end)", float(ds[f"g2g_ms_p{q}"])))
    return rows


def latency_plots(ds: xr.Dataset):
    """A stacked bar of the measured stages beside the seed's budget, and fps_actual vs fps_target."""
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401  (registers the backend; notebooks load the extension)
    order = ["measured p50", "measured p95", "budget low", "budget high", "g2g p50", "g2g p95"]
    rows = sorted(budget_table(ds), key=lambda r: order.index(r[0]))
    tallest = max(sum(ms for b, _s, ms in rows if b == bar) for bar in order)
    bars = hv.Bars(rows, kdims=["bar", "stage"], vdims=hv.Dimension("ms", label="latency (ms)")).opts(
        stacked=True, width=640, height=380, legend_position="right", xrotation=20, tools=["hover"],
        ylim=(0, 1.05 * max(tallest, BUDGET_TOTAL_MS)),
        title=f"per-stage latency vs budget ({ds.attrs.get('model', '?')}, {ds.attrs.get('window_s', '?')} s); "
              f"red: {BUDGET_TOTAL_MS:g} ms total")
    limit = hv.HLine(BUDGET_TOTAL_MS).opts(color="red", line_dash="dashed")
    t = ds["second"].values + 0.5  # the middle of each one-second bin
    target = hv.Curve((t, ds["fps_target"].values), "second", "fps", label="fps_target").opts(line_dash="dashed")
    actual = hv.Curve((t, ds["fps_actual"].values), "second", "fps", label="fps_actual")
    fps = (target * actual * hv.Scatter((t, ds["fps_actual"].values), "second", "fps")).opts(
        width=640, height=260, legend_position="bottom_right", ylim=(0, None),
        title="frames per second over time (new frames received per second)")
    return (bars * limit + fps).cols(1)
