"""Builds the aiohttp application: static player, POST /offer, /healthz, /metrics, clean shutdown.

Every error is JSON {error: {code, message}} with a 4xx status (5xx only for our own faults), never a trace.
"""

from __future__ import annotations

import json
import logging
import pathlib

from aiohttp import web

from worldlab.engine import Scheduler
from worldlab.server import metrics as prom
from worldlab.transport import protocol
from worldlab.transport.peer import ROOM_RE, OfferError, PeerHub

log = logging.getLogger(__name__)
STATIC = pathlib.Path(__file__).resolve().parents[1] / "static"
MAX_OFFER_BYTES = 64 * 1024
HUB, SCHED, REGISTRY = web.AppKey("hub", PeerHub), web.AppKey("scheduler", Scheduler), web.AppKey("registry", object)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def json_errors(request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error on %s", request.path)
        return error(500, "internal", "internal server error (see the server log)")


async def index(request):
    return web.FileResponse(STATIC / "index.html")


async def watch(request):
    if not ROOM_RE.match(request.match_info["room"]):
        return error(400, "bad_room", "room ids are 1-64 characters of A-Z a-z 0-9 _ -")
    return web.FileResponse(STATIC / "watch.html")


async def healthz(request):
    hub, sched = request.app[HUB], request.app[SCHED]
    ok = sched.alive and not hub.closed
    body = {"ok": ok, "rooms": len(hub.rooms), "peers": len(hub.pcs), "model": sched.model.describe()}
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request):
    return web.Response(body=prom.render(request.app[REGISTRY]), content_type="text/plain", charset="utf-8")


def _field(body: dict, name: str, kind, required=False):
    v = body.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, kind) or isinstance(v, bool):
        raise OfferError(400, "bad_field", f"field {name!r} must be {kind.__name__}")
    return v


async def offer(request):
    if request.content_type != "application/json":
        return error(415, "unsupported_media_type", f"POST /offer needs application/json, got {request.content_type}")
    if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
        return error(413, "too_large", f"offer is {request.content_length} bytes; the limit is {MAX_OFFER_BYTES}")
    raw = await request.content.read(MAX_OFFER_BYTES + 1)
    if len(raw) > MAX_OFFER_BYTES:
        return error(413, "too_large", f"offer exceeds {MAX_OFFER_BYTES} bytes")
    try:
        body = json.loads(raw)
    except ValueError:
        return error(400, "bad_json", "body is not valid JSON")
    if not isinstance(body, dict):
        return error(400, "bad_json", "body must be a JSON object")
    try:
        sdp = _field(body, "sdp", str, required=True)
        if body.get("type") != "offer":
            raise OfferError(400, "bad_field", f"field 'type' must be 'offer', got {body.get('type')!r}")
        if not sdp.startswith("v=0"):
            raise OfferError(400, "bad_sdp", "field 'sdp' is not an SDP description")
        room = _field(body, "room", str)
        if room is not None and not ROOM_RE.match(room):
            raise OfferError(400, "bad_room", "room ids are 1-64 characters of A-Z a-z 0-9 _ -")
        role = body.get("role", "player")
        if role not in ("player", "viewer"):
            raise OfferError(400, "bad_field", f"field 'role' must be 'player' or 'viewer', got {role!r}")
        prompt = _field(body, "prompt", str)
        preset = body.get("preset", "auto")
        if preset not in protocol.QUALITY:
            raise OfferError(400, "bad_field", f"field 'preset' must be one of {protocol.QUALITY}")
        answer = await request.app[HUB].offer(sdp, "offer", room=room, prompt=prompt, role=role, quality=preset)
    except OfferError as exc:
        return error(exc.status, exc.code, str(exc))
    except ValueError as exc:  # e.g. an empty or oversized prompt
        return error(400, "bad_field", str(exc))
    return web.json_response(answer)


def build_app(model, *, codec: str = "vp8", fps: float = 30.0, micro_batching: bool = True,
              seed: int = 0) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_OFFER_BYTES * 2)
    sched = Scheduler(model, micro_batching=micro_batching)
    hub = PeerHub(model, sched, codec=codec, fps=fps, seed=seed)
    app[SCHED], app[HUB], app[REGISTRY] = sched, hub, prom.registry_for(hub)
    app.router.add_get("/", index)
    app.router.add_get("/watch/{room}", watch)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/offer", offer)
    app.router.add_static("/static/", STATIC)

    async def start(app):
        sched.start()

    async def stop(app):  # aiohttp runs this on SIGINT/SIGTERM too
        await hub.close()
        sched.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app
