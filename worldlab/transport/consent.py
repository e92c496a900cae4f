"""Faster dead-peer detection: ICE consent freshness (RFC 7675) with our interval and failure count.

A peer whose network or DTLS dies without a goodbye is only noticed by consent checks; aioice's fixed ~30 s
would hold its room (and a max_sessions slot) that long. aioice has no option for it, so each server
connection gets a copy of aioice's own `query_consent` that reads our numbers instead of its constants.
"""

from __future__ import annotations

import functools
import logging
import types

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _query_consent(interval_s: float, failures: int):
    from aioice.ice import Connection

    fn = Connection.query_consent
    scope = {**fn.__globals__, "CONSENT_INTERVAL": interval_s, "CONSENT_FAILURES": failures}
    return types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)


def tighten_consent(pc, interval_s: float, failures: int) -> bool:
    """Call after setLocalDescription (before ICE completes, when aioice starts its checks): the peer fails
    after `failures` unanswered checks `interval_s` (+-20 %) apart. False if aioice's internals changed."""
    try:
        query = _query_consent(interval_s, failures)
        ice = {t.sender.transport.transport for t in pc.getTransceivers() if t.sender.transport is not None}
        if pc.sctp is not None:
            ice.add(pc.sctp.transport.transport)
        conns = [t._connection for t in ice]
        if not all(hasattr(c, "query_consent") for c in conns):
            raise AttributeError("query_consent")
    except (ImportError, AttributeError):
        log.warning("cannot tune ICE consent checks with this aioice; dead peers are noticed after ~30 s")
        return False
    for c in conns:
        c.query_consent = types.MethodType(query, c)
    return True
