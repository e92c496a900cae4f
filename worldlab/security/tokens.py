"""Room access tokens: HMAC-SHA256 over (room, tenant, role, expiry, key id), and the keyring that signs them.

A token is base64url(JSON payload) "." base64url(mac); the keyring keeps a current and a previous key so keys
rotate without dropping live sessions (tokens signed by the previous key still verify).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import pathlib
import re
import secrets
import time
from dataclasses import dataclass

from worldlab.security import config_dir

ROLES = ("player", "viewer", "admin")
# The token roles that satisfy a required role: a player may also watch its room; admin opens only the
# operator endpoints (/metrics room labels, /healthz details), never a room.
GRANTS = {"player": ("player",), "viewer": ("viewer", "player"), "admin": ("admin",)}
ANY_ROOM = "*"  # the room of an admin token
DEFAULT_TENANT = "default"
KEY_BYTES = 32
MAX_TOKEN_CHARS = 1024  # real tokens are ~250 characters; longer ones are refused before any work
MAC_CONTEXT = b"worldlab-token-v1."  # domain separation: this key signs nothing else with the same bytes
KEYFILE_VERSION = 1
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")  # strict: no second spelling of a valid token


class TokenError(Exception):
    """A refused token: `status` (401 or 403) and `code` become the HTTP JSON error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Claims:
    room: str
    tenant: str
    role: str
    exp: int  # unix seconds
    kid: str


def default_keys_path() -> pathlib.Path:
    """keys.json in the server's config directory (worldlab.security.config_dir)."""
    return config_dir() / "keys.json"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload_b64: str) -> bytes:
    return hmac.new(key, MAC_CONTEXT + payload_b64.encode("ascii"), hashlib.sha256).digest()


def _bad(message: str) -> TokenError:
    return TokenError(401, "bad_token", message)


class Keyring:
    """A current signing key and, after a rotation, the previous one; both verify."""

    def __init__(self, current: tuple[str, bytes], previous: tuple[str, bytes] | None = None,
                 path: str | os.PathLike | None = None):
        self.current, self.previous = current, previous
        self.path = pathlib.Path(path) if path is not None else None

    # -- key file --------------------------------------------------------------------------------
    @staticmethod
    def _fresh() -> tuple[str, bytes]:
        return secrets.token_hex(4), secrets.token_bytes(KEY_BYTES)

    @classmethod
    def create(cls, path) -> "Keyring":
        """Fresh random keys written to `path` (mode 0600; parent directories 0700)."""
        ring = cls(cls._fresh(), path=path)
        ring.save()
        return ring

    @classmethod
    def load(cls, path) -> "Keyring":
        current, previous = cls._read(pathlib.Path(path))
        return cls(current, previous, path=path)

    @classmethod
    def load_or_create(cls, path) -> tuple["Keyring", bool]:
        """(keyring, created): the keys in `path`, or fresh ones written there if it does not exist."""
        if pathlib.Path(path).exists():
            return cls.load(path), False
        return cls.create(path), True

    @staticmethod
    def _read(path: pathlib.Path) -> tuple[tuple[str, bytes], tuple[str, bytes] | None]:
        if not path.is_file():
            raise FileNotFoundError(f"no key file at {path} (`worldlab serve --auth --keys {path}` creates one)")
        if path.stat().st_mode & 0o077:  # as ssh does: a signing key others can read is not a secret
            raise ValueError(f"key file {path} is readable by other users (mode {path.stat().st_mode & 0o777:o}); "
                             f"chmod 600 it")
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read key file {path}: {exc.strerror}") from None
        try:
            doc = json.loads(text)
            if doc.get("version") != KEYFILE_VERSION:
                raise ValueError(f"version {doc.get('version')!r}")
            keys = [None if k is None else (str(k["id"]), _unb64(k["key"])) for k in (doc["current"], doc.get("previous"))]
            if keys[0] is None or any(k is not None and len(k[1]) != KEY_BYTES for k in keys):
                raise ValueError(f"keys must be {KEY_BYTES} bytes")
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise ValueError(f"key file {path} is not a worldlab keyring: {exc}") from None
        return keys[0], keys[1]

    def save(self) -> None:
        """Write atomically (a new 0600 file renamed over the old one), so a reload never sees half a file."""
        doc = {"version": KEYFILE_VERSION,
               **{name: None if k is None else {"id": k[0], "key": _b64(k[1])}
                  for name, k in (("current", self.current), ("previous", self.previous))}}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def rotate(self) -> str:
        """The current key becomes the previous one (its tokens keep verifying); a fresh key signs from now
        on. Saved to the key file if there is one. Returns the new key id."""
        self.current, self.previous = self._fresh(), self.current
        if self.path is not None:
            self.save()
        return self.current[0]

    def reload(self) -> None:
        """Re-read the key file (after a rotation by another process); on error the keys in use stay."""
        self.current, self.previous = self._read(self.path)

    # -- tokens ----------------------------------------------------------------------------------
    def issue(self, room: str | None, role: str, *, tenant: str = DEFAULT_TENANT, ttl_s: int,
              now: float | None = None) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if role != "admin" and not (isinstance(room, str) and room):
            raise ValueError("a player or viewer token needs a room")
        if not (isinstance(tenant, str) and tenant):
            raise ValueError("tenant must be a non-empty string")
        if not ttl_s > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl_s}")
        now = time.time() if now is None else now
        kid, key = self.current
        payload = {"v": 1, "kid": kid, "room": ANY_ROOM if role == "admin" else room, "tenant": tenant,
                   "role": role, "exp": int(now + ttl_s)}
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(_mac(key, body))}"

    def verify(self, token, *, room: str | None = None, role: str | None = None,
               now: float | None = None) -> Claims:
        """The token's claims if it is signed by one of our keys, unexpired, and grants `role` in `room`
        (None: not checked); otherwise TokenError."""
        if token is None or token == "":
            raise TokenError(401, "token_required", "this server needs an access token (`token`)")
        claims = self._authentic(token)
        if claims.exp <= (time.time() if now is None else now):
            raise TokenError(401, "token_expired", "the access token has expired")
        if role is not None and claims.role not in GRANTS[role]:
            raise TokenError(403, "wrong_role", f"a {claims.role} token cannot act as {role}")
        if room is not None and claims.role != "admin" and claims.room != room:
            raise TokenError(403, "wrong_room", "the access token is for another room")
        return claims

    def _authentic(self, token) -> Claims:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not TOKEN_RE.fullmatch(token):
            raise _bad("the access token is malformed")
        body, mac_b64 = token.split(".")
        try:
            mac = _unb64(mac_b64)
        except (ValueError, binascii.Error):
            raise _bad("the access token is malformed") from None
        if _b64(mac) != mac_b64:  # unused low bits set: another spelling of some mac
            raise _bad("the access token is malformed")
        keys = [k for k in (self.current, self.previous) if k is not None]
        matched = [kid for kid, key in keys if hmac.compare_digest(_mac(key, body), mac)]
        if not matched:
            raise _bad("the access token's signature does not verify")
        try:  # authentic from here on: these checks catch our own format changes, not forgeries
            p = json.loads(_unb64(body))
            claims = Claims(p["room"], p["tenant"], p["role"], p["exp"], p["kid"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _bad("the access token is malformed") from None
        if claims.kid != matched[0] or claims.role not in ROLES or not isinstance(claims.exp, int) \
                or not isinstance(claims.room, str) or not isinstance(claims.tenant, str):
            raise _bad("the access token is malformed")
        return claims
