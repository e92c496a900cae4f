"""Builds the aiohttp application: static player, POST /offer, /healthz, /metrics, clean shutdown.

Every error is JSON {error: {code, message}} with a 4xx status (5xx only for our own faults; 503 when full),
never a trace. Responses name no server software or version; `AccessLogger` logs method, path (no query
string), status, size and time per request, never bodies or tokens. /metrics labels rooms only for a
loopback scrape (no proxy headers); anyone else gets aggregates.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import pathlib

import aiohttp
import aiohttp.http_exceptions
import aiohttp.web_response
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from worldlab.config import SessionConfig
from worldlab.engine import Scheduler
from worldlab.server import metrics as prom
from worldlab.transport import protocol
from worldlab.transport.peer import ROOM_RE, OfferError, PeerHub

log = logging.getLogger(__name__)
STATIC = pathlib.Path(__file__).resolve().parents[1] / "static"
SERVER_NAME = "worldlab"  # the Server header: no software versions
HUB, SCHED = web.AppKey("hub", PeerHub), web.AppKey("scheduler", Scheduler)
REGISTRY, PUBLIC_REGISTRY = web.AppKey("registry", object), web.AppKey("public_registry", object)
CONFIG = web.AppKey("config", SessionConfig)
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


class AccessLogger(AbstractAccessLogger):
    """One line per request: client, method, path without the query string (tokens may ride there),
    status, body size, milliseconds. Never headers or bodies."""

    def log(self, request, response, time: float) -> None:
        self.logger.info('%s "%s %s" %s %s %.1fms', request.remote, request.method, request.path,
                         response.status, response.body_length, time * 1000)


def hide_server_version() -> None:
    """aiohttp's default Server header is "Python/3.x aiohttp/3.x"; the low-level error responses (a
    malformed request line) bypass on_response_prepare, so the default itself is replaced."""
    aiohttp.web_response.SERVER_SOFTWARE = SERVER_NAME


async def _harden_headers(request, response) -> None:
    response.headers["Server"] = SERVER_NAME
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.status == 503:
        response.headers.setdefault("Retry-After", "5")


def trusted_scrape(request) -> bool:
    """A loopback client that did not come through a proxy (which would make every client look local)."""
    if any(h in request.headers for h in PROXY_HEADERS):
        return False
    try:
        return request.remote is not None and ipaddress.ip_address(request.remote).is_loopback
    except ValueError:
        return False


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
    registry = request.app[REGISTRY] if trusted_scrape(request) else request.app[PUBLIC_REGISTRY]
    return web.Response(body=prom.render(registry), content_type="text/plain", charset="utf-8")


def _field(body: dict, name: str, kind, required=False):
    v = body.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, kind) or isinstance(v, bool):
        raise OfferError(400, "bad_field", f"field {name!r} must be {kind.__name__}")
    return v


async def read_body(request, limit: int, timeout_s: float) -> bytes | None:
    """The whole body (however many TCP segments it arrives in), or None if it exceeds `limit` bytes.
    Raises TimeoutError if it has not all arrived within `timeout_s`."""
    buf = bytearray()
    async with asyncio.timeout(timeout_s):
        while True:
            chunk = await request.content.read(limit + 1 - len(buf))
            if not chunk:  # end of body
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                return None


async def offer(request):
    cfg = request.app[CONFIG]
    limit = cfg.max_offer_bytes
    if request.content_type != "application/json":
        return error(415, "unsupported_media_type", f"POST /offer needs application/json, got {request.content_type}")
    if request.content_length is not None and request.content_length > limit:
        return error(413, "too_large", f"offer is {request.content_length} bytes; the limit is {limit}")
    try:
        raw = await read_body(request, limit, cfg.offer_read_timeout_s)
    except TimeoutError:
        return error(408, "timeout", f"the offer body did not arrive within {cfg.offer_read_timeout_s:g} s")
    except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError):
        return error(400, "incomplete_body", "the offer body ended early")
    if raw is None:
        return error(413, "too_large", f"offer exceeds {limit} bytes")
    try:
        body = protocol.loads(raw, max_depth=cfg.max_json_depth)
    except protocol.JSONTooDeep as exc:
        return error(400, "bad_json", f"body is not accepted: {exc}")
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
              seed: int = 0, host: str | None = None, config: SessionConfig | None = None) -> web.Application:
    """host: the address HTTP listens on; WebRTC's UDP sockets bind the same one (None: every interface).
    config: limits and timeouts (SessionConfig defaults)."""
    cfg = config or SessionConfig()
    hide_server_version()
    app = web.Application(middlewares=[json_errors], client_max_size=cfg.max_offer_bytes * 2)
    sched = Scheduler(model, micro_batching=micro_batching)
    hub = PeerHub(model, sched, codec=codec, fps=fps, seed=seed, config=cfg, ice_host=host)
    app[SCHED], app[HUB], app[CONFIG] = sched, hub, cfg
    app[REGISTRY], app[PUBLIC_REGISTRY] = prom.registry_for(hub), prom.registry_for(hub, per_room=False)
    app.on_response_prepare.append(_harden_headers)
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
