"""Encrypted triage buffer: the last N seconds of a session's encoded frames and inputs, in memory, each
entry sealed with AES-GCM under a per-session data key that is itself wrapped by the server key.

`seal()` writes the buffer to disk (on a flag or on request); `open_sealed()` checks every GCM tag (any
tampering or a wrong key is a TriageError) and `export()` writes an MP4 plus the input log as JSON lines.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import os
import pathlib
import secrets
import tempfile
import threading
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

FORMAT = "worldlab-triage-1"
KEY_FILE = "triage.key"
DECODERS = {"vp8": "vp8", "h264": "h264", "av1": "libdav1d"}  # one per worldlab.config.CODECS
KEY_BYTES = 32


class TriageError(ValueError):
    """A triage file or key that cannot be used (ValueError: the CLI prints it as one line)."""


def load_server_key(path: pathlib.Path, create: bool = True) -> bytes:
    """The 32-byte key-encryption key in `path` (base64), created with mode 0600 if missing and `create`."""
    path = pathlib.Path(path)
    if not path.exists():
        if not create:
            raise TriageError(f"no triage key at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except (ValueError, OSError) as exc:
        raise TriageError(f"cannot read the triage key {path}: {exc}") from None
    if len(key) != KEY_BYTES:
        raise TriageError(f"triage key {path} must hold {KEY_BYTES} bytes, has {len(key)}")
    return key


@dataclasses.dataclass
class Entry:
    t: float  # seconds since the buffer started
    kind: str  # "frame" | "input"
    nonce: bytes
    blob: bytes  # AES-GCM ciphertext + tag


class TriageBuffer:
    """Bounded by time (`seconds`) and by bytes (`max_bytes`), whatever the session length. Frames are
    kept from a keyframe on, so a sealed buffer always decodes."""

    def __init__(self, session: str, server_key: bytes, *, seconds: float = 45.0, max_bytes: int = 16 << 20,
                 codec: str = "vp8", clock=time.monotonic):
        if not 5 <= seconds <= 600:
            raise ValueError(f"seconds must be in [5, 600], got {seconds}")
        self.session, self.codec, self.seconds, self.max_bytes = session, codec, seconds, max_bytes
        data_key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(data_key)
        self.wrapped_key = aes_key_wrap(server_key, data_key)
        self._entries: collections.deque[Entry] = collections.deque()
        self._bytes = 0
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()

    def _ad(self, kind: str) -> bytes:  # binds each entry to this session and its kind
        return f"{FORMAT}|{self.session}|{kind}".encode()

    def _add(self, kind: str, payload: bytes) -> None:
        nonce = secrets.token_bytes(12)
        entry = Entry(self._clock() - self._t0, kind, nonce, self._aead.encrypt(nonce, payload, self._ad(kind)))
        with self._lock:
            self._entries.append(entry)
            self._bytes += len(entry.blob)
            self._evict(entry.t)

    def add_frame(self, data: bytes, pts: int, keyframe: bool) -> None:
        self._add("frame", json.dumps({"pts": pts, "key": bool(keyframe)}).encode() + b"\n" + bytes(data))

    def add_input(self, message: dict) -> None:
        self._add("input", json.dumps(message, separators=(",", ":")).encode())

    def _evict(self, now: float) -> None:
        """Drop entries older than `seconds` or past `max_bytes` (export starts at the first keyframe left;
        with keyframes every <= 1 s and a window of >= 5 s there always is one)."""
        e = self._entries
        while e and (now - e[0].t > self.seconds or self._bytes > self.max_bytes):
            self._bytes -= len(e.popleft().blob)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def seal(self, path: pathlib.Path, reason: str = "request") -> pathlib.Path:
        """Write the buffer (still encrypted) to `path` atomically; returns the path."""
        with self._lock:
            entries = list(self._entries)
        head = {"format": FORMAT, "session": self.session, "codec": self.codec, "reason": reason,
                "sealed_at": time.time(), "wrapped_key": base64.b64encode(self.wrapped_key).decode(),
                "entries": len(entries)}
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".triage-")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(head) + "\n")
            for en in entries:
                f.write(json.dumps({"t": round(en.t, 4), "k": en.kind, "n": base64.b64encode(en.nonce).decode(),
                                    "c": base64.b64encode(en.blob).decode()}) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path


class TriageStore:
    """A server's triage buffers: one per session under the server key, sealed into `directory`."""

    def __init__(self, directory: pathlib.Path, key: bytes, *, seconds: float = 45.0, max_bytes: int = 16 << 20):
        self.directory, self.key, self.seconds, self.max_bytes = pathlib.Path(directory), key, seconds, max_bytes

    @classmethod
    def at(cls, directory: pathlib.Path, **kw) -> "TriageStore":
        """The store in `directory`, its key in `directory`/triage.key (created 0600 if missing)."""
        directory = pathlib.Path(directory)
        return cls(directory, load_server_key(directory / KEY_FILE), **kw)

    def buffer(self, session: str, codec: str) -> TriageBuffer:
        return TriageBuffer(session, self.key, seconds=self.seconds, max_bytes=self.max_bytes, codec=codec)

    def seal(self, buf: TriageBuffer, reason: str) -> pathlib.Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return buf.seal(self.directory / f"{buf.session}-{stamp}-{secrets.token_hex(3)}.triage", reason)


@dataclasses.dataclass
class Opened:
    head: dict
    frames: list  # (t, pts, keyframe, bytes)
    inputs: list  # (t, message dict)


def open_sealed(path: pathlib.Path, server_key: bytes) -> Opened:
    """Decrypt a sealed buffer; TriageError for a foreign file, a wrong key or any altered byte."""
    try:
        lines = pathlib.Path(path).read_text().splitlines()
        head = json.loads(lines[0])
    except (OSError, ValueError, IndexError) as exc:
        raise TriageError(f"{path} is not a worldlab triage file ({type(exc).__name__})") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise TriageError(f"{path} is not a worldlab triage file")
    if head.get("entries") != len(lines) - 1:
        raise TriageError(f"{path} was truncated or extended: {len(lines) - 1} entries, header says {head.get('entries')}")
    try:
        aead = AESGCM(aes_key_unwrap(server_key, base64.b64decode(head["wrapped_key"])))
    except (InvalidUnwrap, ValueError, KeyError):
        raise TriageError("the data key does not unwrap: wrong server key, or the header was altered") from None
    frames, inputs = [], []
    for i, line in enumerate(lines[1:], 1):
        try:
            rec = json.loads(line)
            kind = rec["k"]
            plain = aead.decrypt(base64.b64decode(rec["n"]), base64.b64decode(rec["c"]),
                                 f"{FORMAT}|{head['session']}|{kind}".encode())
        except (InvalidTag, ValueError, KeyError, TypeError):
            raise TriageError(f"entry {i} fails its integrity check: the file was tampered with") from None
        if kind == "frame":
            meta, data = plain.split(b"\n", 1)
            meta = json.loads(meta)
            frames.append((rec["t"], meta["pts"], meta["key"], data))
        else:
            inputs.append((rec["t"], json.loads(plain)))
    return Opened(head, frames, inputs)


def export(opened: Opened, out_dir: pathlib.Path, size: int = 256) -> tuple[pathlib.Path, pathlib.Path]:
    """MP4 (H.264, frames scaled to `size`, from the first keyframe on) and the input log (JSON lines)."""
    import av

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"triage-{opened.head['session']}"
    video, log = out_dir / f"{stem}.mp4", out_dir / f"{stem}.inputs.jsonl"
    first = next((i for i, f in enumerate(opened.frames) if f[2]), None)
    if first is None:
        raise TriageError("the buffer holds no keyframe: nothing decodable")
    dec = av.CodecContext.create(DECODERS[opened.head["codec"]], "r")
    fps = 30
    with av.open(str(video), "w") as mp4:
        stream = mp4.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        t0, last = opened.frames[first][0], -1
        times = [t for t, _pts, _key, _data in opened.frames[first:]]
        # decode(None) flushes: a decoder with a frame of delay (libdav1d) still gives up its last pictures.
        packets = [av.Packet(data) for _t, _pts, _key, data in opened.frames[first:]] + [None]
        decoded = (frame for packet in packets for frame in dec.decode(packet))
        for t, frame in zip(times, decoded):
            out = frame.reformat(width=size, height=size, format="yuv420p")
            last = out.pts = max(last + 1, round((t - t0) * fps))  # wall-clock timing, strictly increasing
            for pkt in stream.encode(out):
                mp4.mux(pkt)
        for pkt in stream.encode():
            mp4.mux(pkt)
    with open(log, "w") as f:
        for t, msg in opened.inputs:  # t: seconds from the video's first frame (< 0: before it)
            f.write(json.dumps({"t": round(t - t0, 4), **msg}) + "\n")
    return video, log
