"""A local coturn TURN server on loopback (tests, the relay benchmark, trying the relay path on one machine):
REST-API credentials from a shared secret, relaying to loopback peers allowed, stopped on exit.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTurn:
    """`with LocalTurn() as turn:` runs `turnserver` on 127.0.0.1:turn.port (UDP and TCP); turn.config()
    is the SessionConfig fields that point a worldlab server's pages at it, relay-only by default."""

    def __init__(self, binary: str = "turnserver", relay_ports: int = 64, start_timeout_s: float = 10.0):
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise FileNotFoundError(f"{binary!r} not found: install coturn (Debian: apt-get install coturn)")
        self.secret = secrets.token_urlsafe(24)
        self.port = free_port()
        self.relay_ports, self.start_timeout_s = relay_ports, start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="coturn-", suffix=".log", delete=False)

    def url(self, transport: str = "udp") -> str:
        return f"turn:127.0.0.1:{self.port}?transport={transport}"

    def config(self, policy: str = "relay") -> dict:
        return {"ice_servers": [{"urls": [self.url()]}], "ice_transport_policy": policy,
                "turn_secret": self.secret}

    def _args(self) -> list[str]:
        low = 20000 + (self.port % 400) * 100  # a relay port range of its own, so parallel runs do not collide
        return [self.binary, "-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1",
                "--listening-port", str(self.port), "--min-port", str(low), "--max-port", str(low + self.relay_ports),
                "--use-auth-secret", "--static-auth-secret", self.secret, "--realm", "worldlab", "--fingerprint",
                "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli", "--no-software-attribute",
                "--log-file", "stdout", "--simple-log", "--pidfile", self.log.name + ".pid"]

    def start(self) -> "LocalTurn":
        self.proc = subprocess.Popen(self._args(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:  # it listens on TCP and UDP together: a TCP accept means it is up
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnserver exited with {self.proc.returncode}: see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"turnserver did not listen on 127.0.0.1:{self.port} within {self.start_timeout_s:g} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> "LocalTurn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
