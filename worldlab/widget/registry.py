"""Where a kernel announces its Players to the Jupyter server relay: one JSON file per Player (port,
secret, pid) in the Jupyter runtime directory, owner-only, removed on close; a dead kernel's files are
recognised by their pid. Light on purpose: the Jupyter server process imports it (no torch)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import tempfile

SECRET_HEADER = "X-Worldlab-Secret"  # the relay proves to the kernel endpoint that it read the file
ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
PREFIX = "worldlab-player-"


def runtime_dir() -> pathlib.Path:
    from jupyter_core.paths import jupyter_runtime_dir

    return pathlib.Path(jupyter_runtime_dir())


def _path(player_id: str) -> pathlib.Path:
    if not ID_RE.match(player_id):
        raise ValueError(f"bad player id {player_id!r}")
    return runtime_dir() / f"{PREFIX}{player_id}.json"


def announce(player_id: str, port: int, secret: str, max_offer_bytes: int) -> pathlib.Path:
    """Write the file atomically with mode 0600 (the secret must not be readable by other users).
    `max_offer_bytes`: the Player's own body limit, which the relay applies before it forwards a request."""
    path = _path(player_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".worldlab-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"port": port, "secret": secret, "pid": os.getpid(), "max_offer_bytes": max_offer_bytes}, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def retire(player_id: str) -> None:
    """The kernel is exiting (restart or shutdown): leave a tombstone so the relay can say so once."""
    path = _path(player_id)
    if path.exists():
        path.write_text(json.dumps({"exited": True, "pid": os.getpid()}))


def withdraw(player_id: str) -> None:
    try:
        _path(player_id).unlink()
    except (FileNotFoundError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else: not our kernel, but not dead either
        return True
    return True


def lookup(player_id: str) -> tuple[dict | None, str]:
    """(announcement, "ok") for a live player; (None, "unknown") when there is no such file; (None,
    "kernel_gone") when its kernel process is gone (a restarted kernel leaves its file; it is removed here)."""
    try:
        entry = json.loads(_path(player_id).read_text())
    except (ValueError, OSError):
        return None, "unknown"
    if isinstance(entry, dict) and entry.get("exited") is True:
        withdraw(player_id)  # said once; the widget remembers
        return None, "kernel_gone"
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), t) for k, t in
                                              (("port", int), ("secret", str), ("pid", int),
                                               ("max_offer_bytes", int))):
        return None, "unknown"
    if not _alive(entry["pid"]):
        withdraw(player_id)
        return None, "kernel_gone"
    return entry, "ok"
