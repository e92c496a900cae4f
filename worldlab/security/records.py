"""Signed session records: who streamed what, under which watermark id, signed with the server's Ed25519 key.

`RecordStore(directory)` keeps the key (PEM, mode 0600, created if missing) and an append-only JSON-lines file
beside it; `worldlab verify` looks a recovered watermark id up there and checks the record's signature.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import pathlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from worldlab.security import config_dir

KEY_FILE = "signing_key.pem"
RECORDS_FILE = "session_records.jsonl"


def canonical(record: dict) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def model_hash(description: dict) -> str:
    """sha256 of a model's describe() JSON: names the weights and toggles a session ran on."""
    return hashlib.sha256(canonical(description)).hexdigest()


def make_record(session: str, watermark_id: str, room: str, model_sha256: str, *, tenant: str | None = None,
                start: datetime.datetime | None = None) -> dict:
    start = start or datetime.datetime.now(datetime.timezone.utc)
    return {"session": session, "watermark_id": watermark_id, "room": room, "tenant": tenant,
            "start": start.astimezone(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model_sha256": model_sha256}


def verify(record: dict, signature: str, public_key: Ed25519PublicKey) -> bool:
    """True when `signature` (base64) is `public_key`'s signature of this exact record."""
    try:
        public_key.verify(base64.b64decode(signature, validate=True), canonical(record))
        return True
    except (InvalidSignature, ValueError):
        return False


def load_or_create_key(path: pathlib.Path) -> Ed25519PrivateKey:
    """The PEM key at `path`; a fresh one written there (0600, parent 0700) when there is none."""
    path = pathlib.Path(path).expanduser()
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


class RecordStore:
    """A directory holding the signing key and the records file (the key path may be given separately)."""

    def __init__(self, directory: str | os.PathLike | None = None, *, key_path: str | os.PathLike | None = None):
        self.dir = pathlib.Path(directory).expanduser() if directory else config_dir()
        self.key_path = pathlib.Path(key_path).expanduser() if key_path else self.dir / KEY_FILE
        self.records_path = self.dir / RECORDS_FILE
        self._key: Ed25519PrivateKey | None = None

    @property
    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create_key(self.key_path)
        return self._key

    def prepare(self) -> "RecordStore":
        """Load (or create) the key now, so a bad path fails at start-up rather than on the first session."""
        _ = self.key
        return self

    def public_key(self) -> Ed25519PublicKey | None:
        """The server's public key, or None when the directory has no key (nothing was ever signed)."""
        return self.key.public_key() if self.key_path.exists() else None

    def sign(self, record: dict) -> str:
        return base64.b64encode(self.key.sign(canonical(record))).decode()

    def append(self, record: dict) -> str:
        """Sign `record` and append it as one JSON line; returns the signature."""
        signature = self.sign(record)
        line = json.dumps({"record": record, "signature": signature}, sort_keys=True) + "\n"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.records_path, "a", encoding="utf-8") as f:  # one write per line: appends do not interleave
            f.write(line)
        return signature

    def find(self, watermark_id: str) -> tuple[dict, str] | None:
        """(record, signature) of the newest record with this watermark id (hex), or None."""
        if not self.records_path.exists():
            return None
        found = None
        with open(self.records_path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    if entry["record"]["watermark_id"] == watermark_id:
                        found = (entry["record"], entry["signature"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn or foreign line does not hide the others
        return found
