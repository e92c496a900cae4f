"""The kernel side of the relay: a small aiohttp app on the media thread (127.0.0.1, random port, secret
header) that answers offers, toggles and status for this kernel's Players without the kernel's main thread.

One per kernel process, started with its first Player and stopped with its last; each Player is announced
to the Jupyter server through `registry` (see relay.py for the other half).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets

from aiohttp import web

from worldlab.config import SessionConfig, Toggles
from worldlab.transport import protocol
from worldlab.transport.rooms import OfferError
from worldlab.widget import registry

log = logging.getLogger(__name__)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _read_capped(request, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes (no more than limit + 1 are buffered)."""
    buf = bytearray()
    while chunk := await request.content.read(limit + 1 - len(buf)):
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


class KernelEndpoint:
    def __init__(self, media):
        self.media = media
        self.secret = secrets.token_urlsafe(32)
        self.players: dict = {}
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- lifetime (called from the kernel's main thread) ---------------------------------------
    def register(self, player) -> None:
        if self.runner is None:
            self.media.call(self._start(), timeout=30)
        self.players[player.player_id] = player
        registry.announce(player.player_id, self.port, self.secret, player.hub.cfg.max_offer_bytes)

    def unregister(self, player, kernel_exit: bool = False) -> None:
        (registry.retire if kernel_exit else registry.withdraw)(player.player_id)
        self.players.pop(player.player_id, None)
        if not self.players and self.runner is not None:
            runner, self.runner, self.port = self.runner, None, None
            self.media.call(runner.cleanup(), timeout=15)

    async def _start(self) -> None:
        # Bodies are read by _body against each player's own limit, not the app-wide client_max_size.
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/players/{pid}", self._status)
        app.router.add_post("/players/{pid}/offer", self._offer)
        app.router.add_post("/players/{pid}/toggle", self._toggle)
        app.router.add_post("/players/{pid}/view_closed", self._view_closed)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    # -- requests (on the media thread) ----------------------------------------------------------
    @web.middleware
    async def _guard(self, request, handler):
        if not hmac.compare_digest(request.headers.get(registry.SECRET_HEADER, ""), self.secret):
            return _error(403, "forbidden", "missing or wrong relay secret")
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("relay request %s failed", request.path)
            return _error(500, "internal", "the kernel could not handle the request (see the kernel log)")

    def _player(self, request):
        player = self.players.get(request.match_info.get("pid", ""))
        if player is None or player.status != "live":
            raise web.HTTPNotFound(text='{"error": {"code": "gone", "message": "this player was closed; run the '
                                        'Player cell again"}}', content_type="application/json")
        return player

    async def _body(self, request, cfg: SessionConfig) -> dict:
        limit = cfg.max_offer_bytes
        raw = await _read_capped(request, limit)
        if raw is None:
            error = {"error": {"code": "too_large", "message": f"body exceeds {limit} bytes"}}
            raise web.HTTPRequestEntityTooLarge(limit, limit + 1, text=json.dumps(error),
                                                content_type="application/json")
        try:
            body = protocol.loads(raw, cfg.max_json_depth)
        except ValueError:
            raise web.HTTPBadRequest(text='{"error": {"code": "bad_json", "message": "body is not valid JSON"}}',
                                     content_type="application/json") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": {"code": "bad_json", "message": "body must be an object"}}',
                                     content_type="application/json")
        return body

    async def _status(self, request):
        p = self._player(request)
        return web.json_response({"status": p.status, "room": p.room.id, "views": p.views, "mode": p.mode,
                                  "toggles": {"weights": p.weights, "window": p.window, "kv": p.kv}})

    async def _offer(self, request):
        p = self._player(request)
        body = await self._body(request, p.hub.cfg)
        sdp = body.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0") or body.get("type") != "offer":
            return _error(400, "bad_sdp", "expected {sdp: 'v=0...', type: 'offer'}")
        try:
            ans = await p.accept_offer(sdp)
        except OfferError as exc:
            return _error(exc.status, exc.code, str(exc))
        return web.json_response(ans)

    async def _toggle(self, request):
        p = self._player(request)
        body = await self._body(request, p.hub.cfg)
        try:
            Toggles(**{"weights": p.weights, "window": p.window, "kv": p.kv, **body})
        except (TypeError, ValueError) as exc:
            return _error(400, "bad_toggle", str(exc))
        try:
            await p.switch(**body)
        except ValueError as exc:  # e.g. the session has not made enough frames to prefill another variant
            return _error(409, "switch_failed", str(exc))
        return web.json_response({"weights": p.weights, "window": p.window, "kv": p.kv})

    async def _view_closed(self, request):
        self._player(request).view_closed()
        return web.json_response({"ok": True})


_endpoint: KernelEndpoint | None = None


def kernel_endpoint(media) -> KernelEndpoint:
    global _endpoint
    if _endpoint is None:
        _endpoint = KernelEndpoint(media)
    return _endpoint

