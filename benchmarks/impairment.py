"""netem-like network impairment (loss, delay, jitter, outages) applied inside aioice's UDP sockets, for the
impairment benchmark and its tests: this kernel has no sch_netem, so `tc netem` on a veth pair is impossible.

Every datagram an aioice socket of this process receives or sends (RTP, RTCP, DTLS, SCTP, STUN alike) is
dropped with probability `loss`, or held gauss(delay, jitter) seconds; during an outage all are dropped.
Wrapping one side's sockets impairs both directions, like netem on both ends of a veth pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time

import aioice.ice


class Impairment:
    """Conditions for every aioice socket opened in this process while `installed()` is active (the Python
    client's in the client mode, the in-process server's in the page mode). The outage may be started from
    another thread than the sockets' event loop (`outage(seconds)`)."""

    def __init__(self, loss: float, delay_ms: float, jitter_ms: float, seed: int = 0):
        self.loss, self.delay, self.jitter = loss, delay_ms / 1000, jitter_ms / 1000
        self.outage_until = 0.0
        self.rng = random.Random(seed)
        self.sent = self.dropped = 0
        self._lock = threading.Lock()  # counters and rng: the page mode reads them from another thread

    def outage(self, seconds: float) -> float:
        """Drop everything, both ways, for `seconds` from now; returns when it ends (time.monotonic())."""
        self.outage_until = time.monotonic() + seconds
        return self.outage_until

    def counts(self) -> tuple[int, int]:
        """(datagrams seen, datagrams dropped) so far, in and out."""
        with self._lock:
            return self.sent, self.dropped

    def _fate(self) -> float | None:
        """Seconds to hold a datagram, or None to drop it."""
        with self._lock:
            self.sent += 1
            if time.monotonic() < self.outage_until or self.rng.random() < self.loss:
                self.dropped += 1
                return None
            return max(0.0, self.rng.gauss(self.delay, self.jitter))

    @contextlib.contextmanager
    def installed(self):
        """Impair every aioice socket opened inside the block (then restore aioice as it was). The sockets
        must be opened inside it: aioice's StunProtocol is patched, not sockets that already exist."""
        imp, proto = self, aioice.ice.StunProtocol
        orig_received, orig_made = proto.datagram_received, proto.connection_made
        if getattr(orig_made, "_worldlab_impaired", False):
            raise RuntimeError("an Impairment is already installed in this process")

        def datagram_received(self, data, addr):
            hold = imp._fate()
            if hold is not None:
                asyncio.get_running_loop().call_later(hold, orig_received, self, data, addr)

        class Transport:  # wraps the socket's transport: outgoing datagrams get the same fate
            def __init__(self, inner):
                self._inner = inner

            def sendto(self, data, addr=None):
                hold = imp._fate()
                if hold is not None:
                    asyncio.get_running_loop().call_later(hold, self._send_later, data, addr)

            def _send_later(self, data, addr):
                if not self._inner.is_closing():  # the connection may have closed while it was held
                    self._inner.sendto(data, addr)

            def __getattr__(self, name):
                return getattr(self._inner, name)

        def connection_made(self, transport):
            orig_made(self, transport)
            self.transport = Transport(transport)

        connection_made._worldlab_impaired = True
        proto.datagram_received, proto.connection_made = datagram_received, connection_made
        try:
            yield self
        finally:
            proto.datagram_received, proto.connection_made = orig_received, orig_made
