"""ICE for the page (the STUN/TURN servers of SessionConfig, TURN ones with short-lived REST-API credentials)
and which route a connected peer's media really takes: direct, or through a TURN relay (relay_pct).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from worldlab.config import SessionConfig


def turn_credentials(secret: str, label: str, ttl_s: float, now: float | None = None) -> dict:
    """coturn's `use-auth-secret` scheme (draft-uberti-behave-turn-rest): username "<expiry unix s>:<label>",
    credential base64(HMAC-SHA1(secret, username)); the TURN server checks both without a user database."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{label}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return {"username": username, "credential": base64.b64encode(digest).decode()}


def _is_turn(entry: dict) -> bool:
    return any(u.startswith(("turn:", "turns:")) for u in entry["urls"])


def page_ice_config(cfg: SessionConfig, label: str = "worldlab", now: float | None = None) -> dict:
    """What the page passes to `new RTCPeerConnection(...)`: iceServers and iceTransportPolicy. `label` names
    who the credentials were minted for (a room, or "worldlab"); it ends up in the TURN server's log."""
    servers = []
    for entry in cfg.ice_servers:
        server = dict(entry)
        if _is_turn(entry) and "username" not in entry and cfg.turn_secret:
            server.update(turn_credentials(cfg.turn_secret, label, cfg.turn_credential_ttl_s, now))
        servers.append(server)
    return {"iceServers": servers, "iceTransportPolicy": cfg.ice_transport_policy}


def check_relay_config(cfg: SessionConfig) -> None:
    """A relay-only policy with no TURN server that could relay can never connect: refuse it at start-up."""
    if cfg.ice_transport_policy != "relay":
        return
    usable = [e for e in cfg.ice_servers if _is_turn(e) and ("username" in e or cfg.turn_secret)]
    if not usable:
        raise ValueError("ice_transport_policy 'relay' needs a TURN server in ice_servers with a username and "
                         "credential, or turn_secret set")


def route(pc) -> str | None:
    """'relay' when the nominated candidate pair has a TURN relay candidate on either end, 'direct' for any
    other pair, None while no pair is nominated. aiortc exposes no stats for this, so it reads aioice's pair."""
    try:
        transport = pc.sctp.transport.transport if pc.sctp is not None else \
            pc.getTransceivers()[0].sender.transport.transport
        pair = transport._connection._nominated.get(1)
    except (AttributeError, IndexError):
        return None
    if pair is None:
        return None
    types = (pair.local_candidate.type, pair.remote_candidate.type)
    return "relay" if "relay" in types else "direct"


def relay_pct(pcs) -> float:
    """Percent of the connected peers whose media goes through a TURN relay (0 with none connected)."""
    routes = [r for r in map(route, pcs) if r is not None]
    return 100.0 * routes.count("relay") / len(routes) if routes else 0.0
