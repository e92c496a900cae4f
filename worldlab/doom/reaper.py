"""Game engines never outlive the process that started them: ViZDoom runs each game as a child process that
sleeps forever once its controller is gone (a killed Jupyter kernel, a SIGKILLed server), so one small watcher
per process holds a pipe from it and kills the engines it was told about when that pipe closes.

Run as a script (`python reaper.py`), it imports nothing of worldlab: it reads "+pid start" / "-pid start"
lines on stdin; end of input means the owner died, however it died.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

_LOCK = threading.Lock()
_WATCHER: subprocess.Popen | None = None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/pid/stat): with the pid, its identity."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def game_children(name: str = "vizdoom") -> set[int]:
    """Pids of this process's children whose executable is `name`."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        if comm == name and int(rest[1]) == os.getpid():
            pids.add(int(entry))
    return pids


def _send(line: str) -> None:
    global _WATCHER
    if _WATCHER is None or _WATCHER.poll() is not None:
        _WATCHER = subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                    text=True)
    _WATCHER.stdin.write(line + "\n")
    _WATCHER.stdin.flush()


def watch(pid: int) -> None:
    """Kill `pid` when this process ends (unless forget(pid) came first)."""
    start = _start_time(pid)
    if start is not None:
        with _LOCK:
            _send(f"+{pid} {start}")


def forget(pid: int) -> None:
    start = _start_time(pid)
    with _LOCK:
        if _WATCHER is not None and _WATCHER.poll() is None:
            try:
                _send(f"-{pid} {start}")
            except (BrokenPipeError, ValueError):
                pass


def _serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the owner
    watched: dict[int, str] = {}
    for line in sys.stdin:
        sign, pid, start = line[0], *line[1:].split()
        if sign == "+":
            watched[int(pid)] = start
        else:
            watched.pop(int(pid), None)
    for pid, start in watched.items():
        if _start_time(pid) == start:  # the same process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    _serve()
