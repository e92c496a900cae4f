"""`Player`: the live world model inside a notebook, over WebRTC from the kernel (anywidget).

Signalling goes through the Jupyter server relay (relay.py -> endpoint.py on the media thread), so a busy
kernel still connects, reconnects and hot-switches; the widget comm is the fallback. Media runs on a
background asyncio thread ("worldlab-media"); without a front end (papermill) the session still runs.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import io
import pathlib
import secrets
import threading
import time
import weakref

import anywidget
import numpy as np
import traitlets

from worldlab.config import TOGGLE_CHOICES, SessionConfig, Toggles
from worldlab.engine import Scheduler
from worldlab.engine.metrics import METRICS
from worldlab.security import safety
from worldlab.transport import protocol, websocket
from worldlab.transport.peer import PeerHub
from worldlab.widget.endpoint import kernel_endpoint

HERE = pathlib.Path(__file__).resolve().parent
STATIC = HERE.parent / "static"
FALLBACK_FPS = 10.0
LAST_VIEW_GRACE_S = 5.0
HEARTBEAT_TIMEOUT_S = 10.0  # a re-rendered output gets this long to reattach before the session closes


class MediaLoop:
    """One daemon thread running the asyncio loop that owns every peer connection and track."""

    _instance = None
    _lock = threading.Lock()

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="worldlab-media", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> "MediaLoop":
        with cls._lock:
            if cls._instance is None:
                cls._instance = MediaLoop()
            return cls._instance

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro, timeout: float = 60.0):
        return self.run(coro).result(timeout)


class CommChannel:
    """The widget comm as a ctl channel plus access units (what websocket.pump and PeerHub need of a socket).
    ipykernel sends comm messages from any thread, so this works from the media loop while the kernel is busy."""

    def __init__(self, widget: "Player"):
        self.widget = widget

    @property
    def closed(self) -> bool:
        return self.widget.status != "live" or self.widget.mode != "fallback"

    @property
    def readyState(self) -> str:  # noqa: N802 (RTCDataChannel's name: PeerHub._send reads it)
        return "closed" if self.closed else "open"

    def send(self, text: str) -> None:
        self.widget.send({"type": "ctl", "text": text})

    async def send_au(self, message: bytes) -> None:
        self.widget.send({"type": "au"}, buffers=[message])


class ModelPool:
    """Model variants by toggle setting, each with its own scheduler thread, started on first use.

    Variants are built by the plug-in the model came from (worldlab.model.registry), from the checkpoint the
    Player was given or the model's own; a transformer built by hand (load_model) reloads through `tiny`."""

    def __init__(self, checkpoint=None, base_model=None, device: str = "cpu", config: SessionConfig | None = None):
        from worldlab.model.registry import plugin_of, resolve
        from worldlab.model.world_model import TransformerWorldModel

        self.device, self.config = device, config
        self.checkpoint = checkpoint if checkpoint is not None else getattr(base_model, "checkpoint_path", None)
        self.variants: dict[tuple, tuple] = {}
        self.base_model = base_model
        self.plugin = plugin_of(base_model)
        if self.plugin is None and (base_model is None or isinstance(base_model, TransformerWorldModel)):
            self.plugin = resolve("tiny")
        self._lock = threading.Lock()  # the main thread and the relay (media thread) both switch

    def base_toggles(self) -> dict | None:
        """The toggles the given model runs with (None for a model that does not say)."""
        from worldlab.model.registry import toggles_of

        toggles = toggles_of(self.base_model)
        return None if toggles is None else toggles.to_dict()

    def supports(self, current: dict) -> dict[str, list]:
        """Toggle values the page may offer: the plug-in's; only the current ones for a hand-built model."""
        if self.plugin is None:
            return {k: [v] for k, v in current.items()}
        return {k: list(v) for k, v in self.plugin.supports.items()}

    def get(self, weights: str, window: str, kv: str):
        with self._lock:
            key = (weights, window, kv)
            if key not in self.variants:
                if self.base_model is not None and not self.variants:
                    model = self.base_model
                elif self.plugin is None:
                    raise ValueError("this model was not built by a worldlab model plug-in: its toggles are fixed "
                                     "(build it with worldlab.model.registry.resolve(...).build(...))")
                else:
                    model = self.plugin.build(Toggles(weights, window, kv), self.device, self.checkpoint)
                self.variants[key] = (model, Scheduler(model, name="worldlab-model", config=self.config).start())
            return self.variants[key]

    def stop(self) -> None:
        with self._lock:
            for _model, sched in self.variants.values():
                sched.stop()
            self.variants.clear()


_live: "weakref.WeakSet[Player]" = weakref.WeakSet()


class Player(anywidget.AnyWidget):
    """Play the world model live in a notebook cell: Player(prompt="a snowy forest").

    model_or_session: a WorldModel, or what `--model` takes (a name from `worldlab models`, a checkpoint file,
    module:factory); device: auto | cpu | cuda[:N] for a named model and its toggle variants.
    threads: torch's (process-wide) thread count for the whole kernel; None: worldlab.threads' rule for model
    steps (1: a step gains nothing from more threads and stalls whenever the laptop is busy).
    config: the session's limits and timeouts (SessionConfig; None: its defaults), as `serve --config` sets them."""

    _esm = (STATIC / "player.js").read_text() + "\n" + (HERE / "widget.js").read_text()
    _css = (HERE / "widget.css").read_text()
    prompt = traitlets.Unicode("a walk in the forest").tag(sync=True)
    size = traitlets.Int(384).tag(sync=True)
    fps = traitlets.Float(30.0).tag(sync=True)
    weights = traitlets.Unicode(Toggles.weights).tag(sync=True)
    window = traitlets.Unicode(Toggles.window).tag(sync=True)
    kv = traitlets.Unicode(Toggles.kv).tag(sync=True)
    toggle_choices = traitlets.Dict({k: list(v) for k, v in TOGGLE_CHOICES.items()}).tag(sync=True)
    status = traitlets.Unicode("starting").tag(sync=True)
    mode = traitlets.Unicode("none").tag(sync=True)  # "webrtc" | "fallback" | "none" (no front end yet)
    player_id = traitlets.Unicode("").tag(sync=True)  # the relay route: {base_url}worldlab/players/<id>

    def __init__(self, model_or_session=None, prompt: str = "a walk in the forest", fps: float = 30.0,
                 size: int = 384, *, checkpoint=None, weights=None, window=None, kv=None,
                 threads: int | None = None, device: str = "auto", config: SessionConfig | None = None, **kw):
        from worldlab.threads import for_inference

        for_inference(threads)  # process-wide: the kernel's torch runs the model's steps on this many threads
        from worldlab.model.registry import resolve, resolve_device

        device = resolve_device(device)  # one line for a device this machine lacks
        if isinstance(model_or_session, (str, pathlib.Path)):  # a model name, checkpoint file or module:factory
            plugin = resolve(str(model_or_session))
            wanted = Toggles(weights or Toggles.weights, window or Toggles.window, kv or Toggles.kv)
            model_or_session = plugin.build(wanted, device, checkpoint)
        # Variants of a given model live where it does; of a named one, on `device`.
        device = str(getattr(model_or_session, "device", device))
        pool = ModelPool(checkpoint, base_model=model_or_session, device=device, config=config)
        base = pool.base_toggles() or dataclasses.asdict(Toggles())
        toggles = {"weights": weights or base["weights"], "window": window or base["window"], "kv": kv or base["kv"]}
        Toggles(**toggles)  # one clear error for a bad value
        if pool.plugin is not None:
            pool.plugin.check(Toggles(**toggles))
        super().__init__(prompt=prompt, fps=fps, size=size, player_id=secrets.token_urlsafe(16),
                         toggle_choices=pool.supports(toggles), **toggles, **kw)
        self.media = MediaLoop.get()
        self.pool = pool
        model, sched = self.pool.get(**toggles)
        self.hub = PeerHub(model, sched, fps=fps, config=config)
        self.room = self.media.call(self.hub.create_room(prompt, persistent=True))
        self.room.on_players_gone = self._players_gone
        self.views = 0
        self._frontend: dict = {}
        self._frontend_at = 0.0
        self._fallback_task = None
        self._units = None  # the WebCodecs fallback's CommChannel, once a view asked for it
        self._close_timer = None
        self._switching = False  # set while the relay applies a toggle: the trait echo must not switch again
        self.on_msg(self._on_msg)
        self.observe(self._on_toggle, names=["weights", "window", "kv"])
        self.observe(self._on_prompt, names=["prompt"])
        self.status = "live"
        _live.add(self)
        self.endpoint = kernel_endpoint(self.media)
        self.endpoint.register(self)
        self._watchdog = self.media.run(self._watch_views())

    @traitlets.validate("prompt")
    def _valid_prompt(self, proposal) -> str:
        try:
            return safety.screen_prompt(proposal["value"])
        except ValueError as exc:
            raise traitlets.TraitError(str(exc)) from None

    def _on_prompt(self, change) -> None:
        """`player.prompt = "..."` switches the prompt as the page's prompt box does (KV re-cache)."""
        s = self.room.session
        s.set_prompt(change["new"], s._seq + 1)

    def _players_gone(self) -> None:
        """Every WebRTC view's peer connection is gone (closed tab: ICE consent expired)."""
        if self.mode == "fallback" and time.monotonic() - self._frontend_at <= HEARTBEAT_TIMEOUT_S:
            return  # the view fell back because its peer never connected: the peer's end is not the view's
        self.views = 0
        self._schedule_close()

    async def _watch_views(self) -> None:
        """JPEG-fallback views have no peer connection: a 1 s comm heartbeat silent for 10 s means gone.
        (WebRTC views are judged by their connection instead, so a long-running cell never ends a session.)"""
        while self.status == "live":
            await asyncio.sleep(2.0)
            if self.mode == "fallback" and self.views and time.monotonic() - self._frontend_at > HEARTBEAT_TIMEOUT_S:
                self._players_gone()

    # -- signalling: relay (media thread) or comm (main thread) ---------------------------------
    async def accept_offer(self, sdp: str) -> dict:
        """A view's SDP offer -> answer; every view joins this Player's one room and steers it."""
        self._cancel_close()
        self.views += 1
        ans = await self.hub.offer(sdp, "offer", room=self.room.id, join=True)
        self.mode = "webrtc"
        return ans

    def view_closed(self) -> None:
        self.views = max(0, self.views - 1)
        if self.views == 0:
            self._schedule_close()

    def _on_msg(self, _widget, content, _buffers):
        kind = content.get("type")
        if kind == "offer":
            fut = self.media.run(self.accept_offer(content["sdp"]))
            fut.add_done_callback(lambda f, mid=content.get("id"): self._answer(mid, f))
        elif kind == "frontend_stats":
            self._frontend, self._frontend_at = content.get("stats") or {}, time.monotonic()
        elif kind == "fallback":  # codec "h264": the page decodes access units with WebCodecs; else JPEG
            self.mode = "fallback"
            if self._fallback_task is None:
                units = content.get("codec") == websocket.CODEC
                self._fallback_task = self.media.run(self._send_units() if units else self._send_jpegs())
        elif kind == "ctl_text" and self._units is not None:  # the WebCodecs view's ctl, as a data channel's
            self.media.loop.call_soon_threadsafe(self.hub.ctl.receive, self.room, self._units, content.get("text"), False)
        elif kind == "ctl":
            self._apply_ctl(content.get("msg") or {})
        elif kind == "view_closed":
            self.view_closed()

    def _answer(self, mid, fut) -> None:
        try:
            ans = fut.result()
            self.send({"type": "answer", "id": mid, "sdp": ans["sdp"], "sdp_type": ans["type"],
                       "session": ans["session"], "room": ans["room"]})
        except Exception as exc:  # the view shows the message and falls back to JPEG
            self.send({"type": "offer_error", "id": mid, "message": str(exc)})

    def _apply_ctl(self, msg: dict) -> None:
        """A ctl message over the comm (keys and prompts of the JPEG fallback view): the hub's one handler,
        on the media loop like every other channel's, numbered after the session's newest input."""
        fields = {k: v for k, v in msg.items() if k not in ("type", "seq")}
        try:
            text = protocol.encode(msg.get("type", ""), seq=self.room.session._seq + 1, **fields)
            parsed = protocol.parse(text, cfg=self.hub.cfg)
        except protocol.ProtocolError as exc:
            self.send({"type": "error", "code": exc.code, "message": str(exc)})
            return
        self.media.loop.call_soon_threadsafe(self.hub.ctl.apply, self.room, parsed)

    async def _send_units(self) -> None:
        """The fallback where WebRTC cannot connect, on the served page's WebCodecs path: H.264 access units
        (worldlab.transport.websocket framing) as comm buffers, ctl text both ways through the hub's handler."""
        self._units = CommChannel(self)
        self.hub.attach_channel(self.room, self._units)
        track = self.hub.unit_track(self.room)
        try:
            await websocket.pump(track, self._units)
        finally:
            track.stop()
            await self.hub.detach_channel(self.room, self._units)  # the room is persistent: it lives on

    async def _send_jpegs(self) -> None:
        from PIL import Image

        s = self.room.session
        scale = max(1, self.size // 64)
        while self.status == "live" and self.mode == "fallback":
            frame = self.snapshot()
            if frame is not None:
                buf = io.BytesIO()
                Image.fromarray(frame.repeat(scale, 0).repeat(scale, 1)).save(buf, "JPEG", quality=80)
                self.send({"type": "jpeg", "frame_id": s.frame_id}, buffers=[buf.getvalue()])
            await asyncio.sleep(1.0 / FALLBACK_FPS)

    # -- toggles --------------------------------------------------------------------------------
    async def switch(self, weights: str | None = None, window: str | None = None, kv: str | None = None) -> None:
        """Hot-switch the live session to another toggle setting (on the media thread; the variant loads in
        a worker thread). The traits follow, so `player.weights` is right even while the kernel is busy."""
        want = {"weights": weights or self.weights, "window": window or self.window, "kv": kv or self.kv}
        Toggles(**want)
        model, sched = await asyncio.get_running_loop().run_in_executor(None, lambda: self.pool.get(**want))
        await self.hub.switch_model(self.room, sched)
        self._switching = True
        try:
            for name, value in want.items():
                setattr(self, name, value)
        finally:
            self._switching = False

    def _on_toggle(self, change) -> None:
        if self._switching:
            return
        try:
            self.media.call(self.switch(self.weights, self.window, self.kv))
        except Exception as exc:
            self.send({"type": "error", "code": "switch_failed", "message": str(exc)})
            raise

    # -- the Python API -------------------------------------------------------------------------
    @property
    def frontend_attached(self) -> bool:
        return bool(self._frontend_report())

    def _frontend_report(self) -> dict:
        """What the page measured: its data-channel report (arrives while the kernel is busy), else the JPEG
        fallback's comm heartbeat; {} when no view reported in the last 3 s."""
        report = self.room.page_report(max_age_s=3.0)
        if report:
            return report
        return self._frontend if self.views and time.monotonic() - self._frontend_at < 3.0 else {}

    @property
    def stats(self) -> dict:
        """The live metric dictionary: server-side stages plus what the page measured (g2g, rtt, decode)."""
        st = self.room.stats()
        fe = self._frontend_report()
        for k in ("capture_ms", "rtt_ms", "decode_ms", "g2g_ms", "g2g_ms_p95"):
            st[k] = fe.get(k)
        st["fps_displayed"] = fe.get("fps_actual")
        st["frontend"] = "attached" if fe else "none attached"
        st["mode"] = self.mode
        return {k: st.get(k) for k in (*METRICS, "g2g_ms_p95", "fps_displayed", "frontend", "mode", "rung",
                                       "frame_id", "room")}

    def snapshot(self) -> np.ndarray | None:
        """The newest generated frame (64, 64, 3) uint8."""
        with self.room.session.slot._cond:
            f = self.room.session.slot._frame
        return None if f is None else f.copy()

    def record(self, seconds: float):
        """Per-frame metrics for `seconds` of the live session as an xarray.Dataset (dim: frame)."""
        import xarray as xr

        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        s = self.room.session
        s.frame_log = []
        time.sleep(seconds)
        log, s.frame_log = s.frame_log, None
        if not self.frontend_attached:
            print("worldlab Player: no front end attached; recording kernel-side metrics only")
        t0 = log[0][0] if log else 0.0
        arr = np.array(log, dtype=float).reshape(-1, 5)
        st = self.stats
        ds = xr.Dataset(
            {"t_s": ("frame", arr[:, 0] - t0), "seq": ("frame", arr[:, 2].astype(int)),
             "model_ms": ("frame", arr[:, 3]), "queue_ms": ("frame", arr[:, 4])},
            coords={"frame": arr[:, 1].astype(int)},
            attrs={"weights": self.weights, "window": self.window, "kv": self.kv, "prompt": s.prompt,
                   "fps_target": self.fps, "kv_bytes": int(st["kv_bytes"] or 0), "frontend": st["frontend"],
                   "seconds": float(seconds)})
        ds["fps_actual"] = len(log) / seconds
        return ds

    def _schedule_close(self) -> None:
        self._cancel_close()
        self._close_timer = threading.Timer(LAST_VIEW_GRACE_S, lambda: self.views == 0 and self.close())
        self._close_timer.daemon = True
        self._close_timer.start()

    def _cancel_close(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def close(self, *, kernel_exit: bool = False) -> None:
        """Stop the session: peer connections closed, model workers joined; views show a message.
        kernel_exit: the process is ending (atexit), so views are told "kernel restarted" by the relay."""
        if self.status == "closed" or "_watchdog" not in self.__dict__:  # closed, or __init__ raised early
            return
        self._cancel_close()
        self.status = "closed"
        self._watchdog.cancel()
        try:
            self.endpoint.unregister(self, kernel_exit=kernel_exit)
            self.media.call(self.hub.close(), timeout=15)
        finally:
            self.pool.stop()
            _live.discard(self)


def close_all(*, kernel_exit: bool = False) -> None:
    for p in list(_live):
        p.close(kernel_exit=kernel_exit)


atexit.register(close_all, kernel_exit=True)
