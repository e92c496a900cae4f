"""Jupyter server extension: `{base_url}worldlab/players/<id>[/offer|/toggle|/view_closed]` relays a
Player's signalling to its kernel's endpoint over loopback, so a busy kernel still answers (see docs/widget.md).

Same origin as JupyterLab (works under a base URL, JupyterHub and reverse proxies); requests need Jupyter
auth (+ XSRF for cookie-authenticated POSTs) and the `kernels` permission, and an unknown or dead player is
a 404 JSON that never reaches a kernel. Enabled by `pip install` (etc/jupyter/jupyter_server_config.d)."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import httpclient, web

from worldlab.widget import registry

ACTIONS = ("offer", "toggle", "view_closed")
KERNEL_GONE = "the kernel restarted or shut down: this player's session is gone; run the Player cell again"
RELAY_TIMEOUT_S = 60.0  # a toggle loads a model variant in the kernel: seconds, not minutes


class PlayerRelay(APIHandler):
    auth_resource = "kernels"  # talking to a kernel's player needs the right to use kernels

    def _error(self, status: int, code: str, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    @web.authenticated
    @authorized
    async def get(self, player_id: str, action: str | None = None):
        if action is not None:
            return self._error(405, "method_not_allowed", f"use POST for {action}")
        if (entry := self._lookup(player_id)) is not None:
            await self._relay(entry, player_id, "GET", "", None)

    @web.authenticated
    @authorized
    async def post(self, player_id: str, action: str | None = None):
        if action not in ACTIONS:
            return self._error(404, "unknown_action", f"POST one of {ACTIONS}")
        if (entry := self._lookup(player_id)) is None:
            return
        limit = entry["max_offer_bytes"]  # the Player's own limit (its config), checked before its kernel is bothered
        if len(self.request.body) > limit:
            return self._error(413, "too_large", f"body exceeds {limit} bytes")
        await self._relay(entry, player_id, "POST", "/" + action, self.request.body or b"{}")

    def _lookup(self, player_id: str) -> dict | None:
        """The live player's announcement, or None with the 404 sent."""
        entry, why = registry.lookup(player_id)  # a malformed id is "unknown" there: no path is built from it
        if why == "kernel_gone":
            self._error(404, "kernel_gone", KERNEL_GONE)
        elif entry is None:
            self._error(404, "gone", "no live worldlab player with this id (closed, or never existed); "
                                     "run the Player cell again")
        return entry

    async def _relay(self, entry: dict, player_id: str, method: str, suffix: str, body: bytes | None) -> None:
        req = httpclient.HTTPRequest(
            f"http://127.0.0.1:{entry['port']}/players/{player_id}{suffix}", method=method, body=body,
            headers={registry.SECRET_HEADER: entry["secret"], "Content-Type": "application/json"},
            request_timeout=RELAY_TIMEOUT_S)
        try:
            res = await httpclient.AsyncHTTPClient().fetch(req, raise_error=False)
        except OSError:  # connection refused: the kernel died between the lookup and now
            return self._error(404, "kernel_gone", KERNEL_GONE)
        if res.code == 599:  # tornado's code for a timeout or a dropped connection
            return self._error(504, "kernel_timeout", "the kernel's player did not answer in time")
        self.set_status(res.code)
        self.finish(res.body)


def _jupyter_server_extension_points():
    return [{"module": "worldlab.widget.relay"}]


def _load_jupyter_server_extension(serverapp) -> None:
    web_app = serverapp.web_app
    route = url_path_join(web_app.settings["base_url"], r"/worldlab/players/([^/]+)(?:/([a-z_]+))?")
    web_app.add_handlers(".*$", [(route, PlayerRelay)])
    serverapp.log.info("worldlab: player relay at %s", url_path_join(web_app.settings["base_url"], "worldlab/players/"))
