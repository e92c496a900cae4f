"""The aiohttp server behind `worldlab serve`: player and spectator pages, /offer, /healthz, /metrics.

State lives in app[...] keys; rooms and peers live in worldlab.transport.peer.
"""

from worldlab.server.app import build_app

__all__ = ["build_app"]
