"""Builds the aiohttp application: static player, POST /offer, /healthz, /metrics, clean shutdown.

Every error is JSON {error: {code, message}} with a 4xx status (5xx only for our own faults; 503 when full),
never a trace. Responses name no server software or version; `AccessLogger` logs method, path (no query
string), status, size and time per request, never bodies or tokens. /metrics room labels and /healthz
details only for a loopback scrape (no proxy headers) or an admin token; anyone else gets aggregates.
With a keyring, POST /offer needs a room token (worldlab.security.tokens); with `allowed_hosts`, other
Host/Origin names get 403 (DNS rebinding); offers are rate-limited per client IP (429 + Retry-After).
POST /admin/drain (or SIGTERM, in `worldlab serve`) drains: /healthz and new offers answer 503 draining.
GET /ws is the WebCodecs fallback (H.264 over a WebSocket) with /offer's token gate, rate limit and errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import pathlib
import urllib.parse

import aiohttp
import aiohttp.http_exceptions
import aiohttp.web_response
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from worldlab.config import SessionConfig
from worldlab.engine import Scheduler
from worldlab.security.ratelimit import TokenBucket
from worldlab.security.tokens import Keyring, TokenError
from worldlab import telemetry
from worldlab.server import metrics as prom
from worldlab.transport import ice, protocol, websocket
from worldlab.transport.peer import PeerHub
from worldlab.transport.rooms import ROOM_RE, OfferError
from worldlab.model.protocol import describe

log = logging.getLogger(__name__)
STATIC = pathlib.Path(__file__).resolve().parents[1] / "static"
SERVER_NAME = "worldlab"  # the Server header: no software versions
HUB, SCHED = web.AppKey("hub", PeerHub), web.AppKey("scheduler", Scheduler)
REGISTRY, PUBLIC_REGISTRY = web.AppKey("registry", object), web.AppKey("public_registry", object)
CONFIG = web.AppKey("config", SessionConfig)
KEYRING, ALLOWED_HOSTS = web.AppKey("keyring", object), web.AppKey("allowed_hosts", object)  # None: off
OFFER_LIMIT = web.AppKey("offer_limit", TokenBucket)
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
BAD_ROOM = "room ids are 1-64 characters of A-Z a-z 0-9 _ -"  # ROOM_RE in words


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


def host_name(authority: str) -> str | None:
    """The lower-case host name of a Host header value or an allow-list entry ("name[:port]", "[v6]:port",
    a bare IPv6 address); None if it cannot be parsed."""
    if authority.count(":") > 1 and not authority.startswith("["):
        return authority.lower()
    try:
        return urllib.parse.urlsplit("//" + authority).hostname
    except ValueError:
        return None


def _origin_name(origin: str) -> str | None:
    try:
        return urllib.parse.urlsplit(origin).hostname
    except ValueError:
        return None


@web.middleware
async def check_host(request, handler):
    """A page on another name whose DNS now points here (DNS rebinding) sends that name as Host/Origin."""
    allowed = request.app[ALLOWED_HOSTS]
    if allowed is not None:
        names = [host_name(request.headers.get("Host", ""))]
        if "Origin" in request.headers:
            names.append(_origin_name(request.headers["Origin"]))
        if any(n is None or n not in allowed for n in names):
            return error(403, "bad_host", "this server does not answer to that host name")
    return await handler(request)


def privileged(request) -> bool:
    """May see room names and server details: a loopback scrape, or `Authorization: Bearer <admin token>`.
    A bearer token that does not verify raises TokenError (the operator should know it is wrong)."""
    if trusted_scrape(request):
        return True
    keyring, auth = request.app[KEYRING], request.headers.get("Authorization", "")
    if keyring is None or not auth.startswith("Bearer "):
        return False
    keyring.verify(auth.removeprefix("Bearer ").strip(), role="admin")
    return True


def token_error(exc: TokenError) -> web.Response:
    resp = error(exc.status, exc.code, str(exc))
    if exc.status == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


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
        return error(400, "bad_room", BAD_ROOM)
    return web.FileResponse(STATIC / "watch.html")


async def healthz(request):
    hub, sched = request.app[HUB], request.app[SCHED]
    draining = hub.drain_remaining()
    ok = sched.alive and not hub.closed and draining is None
    try:
        detailed = privileged(request)
    except TokenError as exc:
        return token_error(exc)
    body = {"ok": ok}
    if draining is not None:  # a load balancer stops routing here on the 503
        body.update(draining=True, deadline_s=round(draining, 1))
    if detailed:
        body.update(rooms=len(hub.rooms), peers=len(hub.pcs), model=describe(sched.model))
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request):
    try:
        registry = request.app[REGISTRY] if privileged(request) else request.app[PUBLIC_REGISTRY]
    except TokenError as exc:
        return token_error(exc)
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


def rate_limited(request) -> web.Response | None:
    """429 with Retry-After once this client IP has spent its offer burst (checked before the body is read)."""
    bucket, ip = request.app[OFFER_LIMIT], request.remote or "unknown"
    if bucket.allow(ip):
        return None
    wait = max(1, math.ceil(bucket.retry_after(ip)))
    resp = error(429, "rate_limited", f"too many offers from this address; retry in {wait} s")
    resp.headers["Retry-After"] = str(wait)
    return resp


def authorize(keyring: Keyring | None, body: dict, room: str | None, role: str) -> str | None:
    """The tenant of the offer's token (None without a keyring). The token names one room, so an
    authenticated offer names it too: a player cannot get a server-chosen room."""
    if keyring is None:
        return None
    token = _field(body, "token", str)
    if token is not None and room is None:
        raise OfferError(400, "room_required", "an offer with a token must name its room (`room`)")
    return keyring.verify(token, room=room, role=role).tenant


async def offer(request):
    if (refused := rate_limited(request)) is not None:
        return refused
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
        room = room_field(body)
        role = body.get("role", "player")
        if role not in ("player", "viewer"):
            raise OfferError(400, "bad_field", f"field 'role' must be 'player' or 'viewer', got {role!r}")
        tenant = authorize(request.app[KEYRING], body, room, role)  # before the SDP or prompt is looked at
        sdp = _field(body, "sdp", str, required=True)
        if body.get("type") != "offer":
            raise OfferError(400, "bad_field", f"field 'type' must be 'offer', got {body.get('type')!r}")
        if not sdp.startswith("v=0"):
            raise OfferError(400, "bad_sdp", "field 'sdp' is not an SDP description")
        prompt = _field(body, "prompt", str)
        preset = preset_field(body)
        answer = await request.app[HUB].offer(sdp, "offer", room=room, prompt=prompt, role=role, quality=preset,
                                              tenant=tenant, codec=body.get("codec"))  # PeerHub checks it
    except (TokenError, ValueError) as exc:
        return admission_error(exc)
    return web.json_response(answer)


def offer_error(exc: OfferError) -> web.Response:
    resp = error(exc.status, exc.code, str(exc))
    if exc.retry_after_s is not None:
        resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return resp


def admission_error(exc: Exception) -> web.Response:
    """The one answer of /offer and /ws to a refused session: a token, offer or field error."""
    if isinstance(exc, TokenError):
        return token_error(exc)
    if isinstance(exc, OfferError):
        return offer_error(exc)
    return error(400, "bad_field", str(exc))  # a ValueError, e.g. an empty or oversized prompt


def room_field(fields) -> str | None:
    """The `room` field /offer (JSON body) and /ws (query) share; OfferError when bad."""
    room = _field(fields, "room", str)
    if room is not None and not ROOM_RE.match(room):
        raise OfferError(400, "bad_room", BAD_ROOM)
    return room


def preset_field(fields) -> str:
    """The `preset` field (a quality rung or auto) /offer and /ws share; OfferError when bad."""
    preset = fields.get("preset", "auto")
    if preset not in protocol.QUALITY:
        raise OfferError(400, "bad_field", f"field 'preset' must be one of {protocol.QUALITY}")
    return preset


def same_origin(request) -> bool:
    """A browser's WebSocket is not bound by CORS: refuse one opened by a page of another origin (a site the
    user visits must not start and steer a session on their local server). Non-browser clients send no Origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        return urllib.parse.urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False


async def ws_stream(request):
    """GET /ws?room=R&token=T&prompt=P&preset=Q: the WebCodecs fallback for a page whose WebRTC cannot connect
    (worldlab.transport.websocket). The checks and errors of POST /offer: as JSON without the upgrade; with it,
    as a ctl `error` {code, message, status} and a close with code 4000 + status (a page cannot read a refused
    handshake)."""
    cfg = request.app[CONFIG]
    # aiohttp pings every heartbeat and drops a socket silent for 1.5 of them: about when ICE consent drops a peer.
    # No permessage-deflate: access units are compressed already, and deflating them only adds latency.
    ws = web.WebSocketResponse(max_msg_size=cfg.sctp_max_message_bytes, compress=False,
                               heartbeat=cfg.consent_interval_s * cfg.consent_failures / 1.5)
    upgrade = ws.can_prepare(request).ok
    got = await _socket_room(request, upgrade)
    if isinstance(got, web.Response):
        return await _refuse_socket(request, ws, got) if upgrade else got
    try:
        await ws.prepare(request)
    except (ConnectionError, RuntimeError):  # the client left during the handshake
        await request.app[HUB].detach_channel(got, None)
        return ws
    await websocket.serve(ws, request.app[HUB], got)
    return ws


async def _socket_room(request, upgrade: bool):
    """The room for a /ws request, or the error Response refusing it."""
    if (refused := rate_limited(request)) is not None:
        return refused
    q = request.query
    try:
        if not same_origin(request):
            raise OfferError(403, "bad_origin", "this WebSocket was opened by a page of another origin")
        room = room_field(q)
        tenant = authorize(request.app[KEYRING], q, room, "player")
        preset = preset_field(q)
        if not upgrade:
            raise OfferError(426, "upgrade_required", "GET /ws is a WebSocket: open it with a WebSocket client")
        return await request.app[HUB].open_socket_room(q.get("prompt"), room=room, quality=preset, tenant=tenant)
    except (TokenError, ValueError) as exc:
        return admission_error(exc)


async def _refuse_socket(request, ws: web.WebSocketResponse, refusal: web.Response) -> web.WebSocketResponse:
    err = protocol.loads(refusal.body, request.app[CONFIG].max_json_depth)["error"]
    retry = refusal.headers.get("Retry-After")
    extra = {"retry_after_s": float(retry)} if retry is not None else {}
    await ws.prepare(request)
    await ws.send_str(protocol.encode("error", code=err["code"], message=err["message"], status=refusal.status,
                                      **extra))
    await ws.close(code=4000 + refusal.status, message=err["code"].encode()[:120])
    return ws


async def ice_config(request):
    """GET /ice?room=R&token=T: the page's iceServers and iceTransportPolicy, TURN ones with credentials
    minted for this request. With access tokens it needs a valid room token (TURN relays cost money)."""
    room, token = request.query.get("room"), request.query.get("token")
    if room is not None and not ROOM_RE.match(room):
        return error(400, "bad_room", BAD_ROOM)
    role = request.query.get("role", "player")
    if role not in ("player", "viewer"):
        return error(400, "bad_field", f"role must be 'player' or 'viewer', got {role!r}")
    keyring = request.app[KEYRING]
    if keyring is not None:
        if token is not None and room is None:
            return error(400, "room_required", "with access tokens, GET /ice names its room (?room=R&token=T)")
        try:
            claims = keyring.verify(token, room=room, role=role)
        except TokenError as exc:
            return token_error(exc)
        label = f"{claims.tenant or 'worldlab'}.{room}"
    else:
        label = room or "worldlab"
    return web.json_response(ice.page_ice_config(request.app[CONFIG], label),
                             headers={"Cache-Control": "no-store"})


async def seal_triage(request):
    """POST /triage/{room}: seal that session's triage buffer to disk (loopback or an admin token)."""
    try:
        if not privileged(request):
            return error(403, "forbidden", "sealing a triage buffer needs an admin token")
    except TokenError as exc:
        return token_error(exc)
    room = request.app[HUB].rooms.get(request.match_info["room"])
    if room is None:
        return error(404, "unknown_room", "no live room with that id")
    path = await request.app[HUB].seal_triage(room, "request")
    if path is None:
        return error(409, "no_triage", "this server keeps no triage buffers")
    return web.json_response({"session": room.session.id, "file": path.name})


async def admin_drain(request):
    """POST /admin/drain: stop admitting and end every session by SessionConfig.drain_deadline_s (loopback or
    an admin token); `worldlab serve` exits 0 once drained. 202 {draining, deadline_s}; again: same deadline."""
    try:
        if not privileged(request):
            return error(403, "forbidden", "draining the server needs an admin token")
    except TokenError as exc:
        return token_error(exc)
    left = request.app[HUB].start_drain()
    return web.json_response({"draining": True, "deadline_s": round(left, 1)}, status=202)


def build_app(model, *, codec: str = "vp8", fps: float = 30.0, micro_batching: bool = True,
              seed: int = 0, host: str | None = None, config: SessionConfig | None = None,
              keyring: Keyring | None = None, allowed_hosts=None, records=None, triage=None) -> web.Application:
    """host: the address HTTP listens on; WebRTC's UDP sockets bind the same one (None: every interface).
    config: limits and timeouts (SessionConfig defaults). keyring: POST /offer needs a room token signed by
    it (None: open local demo). allowed_hosts: the only host names accepted in Host/Origin (None: any).
    records: a worldlab.security.records.RecordStore for signed session records (None: none written).
    triage: a worldlab.security.ringbuffer.TriageStore keeping each session's encrypted triage buffer."""
    cfg = config or SessionConfig()
    hide_server_version()
    app = web.Application(middlewares=[json_errors, check_host], client_max_size=cfg.max_offer_bytes * 2)
    app[KEYRING] = keyring
    app[ALLOWED_HOSTS] = None if allowed_hosts is None else frozenset(filter(None, map(host_name, allowed_hosts)))
    app[OFFER_LIMIT] = TokenBucket(cfg.offer_rate_per_s, cfg.offer_burst, max_keys=cfg.rate_limit_max_keys)
    sched = Scheduler(model, micro_batching=micro_batching, config=cfg)
    hist = prom.StageHistograms(cfg.latency_buckets_ms)
    provider = telemetry.tracer_provider(cfg)  # None unless spans go somewhere: then no per-frame cost
    tracer = telemetry.FrameTracer(provider) if provider is not None else None
    hub = PeerHub(model, sched, codec=codec, fps=fps, seed=seed, config=cfg, ice_host=host, records=records,
                  triage=triage, observers=[hist] + ([tracer] if tracer is not None else []))
    app[SCHED], app[HUB], app[CONFIG] = sched, hub, cfg
    app[REGISTRY] = prom.registry_for(hub, histograms=hist)
    app[PUBLIC_REGISTRY] = prom.registry_for(hub, per_room=False, histograms=hist)
    app.on_response_prepare.append(_harden_headers)
    app.router.add_get("/", index)
    app.router.add_get("/watch/{room}", watch)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/offer", offer)
    app.router.add_get("/ws", ws_stream)
    app.router.add_get("/ice", ice_config)
    app.router.add_post("/triage/{room}", seal_triage)
    app.router.add_post("/admin/drain", admin_drain)
    app.router.add_static("/static/", STATIC)

    async def start(app):
        sched.start()

    async def stop(app):  # aiohttp runs this on SIGINT/SIGTERM too
        await hub.close()
        sched.stop()
        if tracer is not None:
            # the rooms' session spans ended with them: export what is buffered (off the loop: OTLP may wait)
            await asyncio.get_running_loop().run_in_executor(None, tracer.shutdown)

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app
