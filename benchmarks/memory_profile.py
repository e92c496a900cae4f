"""Where a churned server's memory goes: `worldlab serve`'s app runs in this process under tracemalloc while
benchmarks/churn_bench.py (a subprocess) keeps a witness session open and churns sessions through it. At each
progress line: RSS, the bytes Python allocated (tracemalloc), and glibc's own view (mallinfo2: bytes in use and
bytes free but kept in its arenas). At the end: the tracemalloc growth by call site between the first sample
past --from and the last, so a Python-level leak shows by name, and a native one as RSS the other two miss.

    python benchmarks/memory_profile.py --sessions 600 --json
    MALLOC_ARENA_MAX=2 python benchmarks/memory_profile.py --sessions 600 --json   # try an allocator setting
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import pathlib
import subprocess
import sys
import threading
import tracemalloc

import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` runs too
from benchmarks.browser import free_port  # noqa: E402
from benchmarks.churn_bench import CHURN_CONFIG  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def glibc_heap() -> dict:
    """glibc's totals over all arenas (MB): in use (uordblks + mmapped hblkhd) and free but held (fordblks)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"heap_in_use_mb": round((m.uordblks + m.hblkhd) / 2**20, 1), "heap_free_held_mb": round(m.fordblks / 2**20, 1)}


def serve_in_thread(model_name: str, port: int):
    """The served app on its own event loop in a daemon thread; returns (loop, hub)."""
    from aiohttp import web

    from worldlab.config import SessionConfig, Toggles
    from worldlab.model.registry import resolve
    from worldlab.server import build_app
    from worldlab.server.app import HUB

    model = resolve(model_name).build(Toggles(), "cpu", None)
    app = build_app(model, host="127.0.0.1", config=SessionConfig(**CHURN_CONFIG))
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, name="served-app", daemon=True).start()
    ready.wait(60)
    return loop, app[HUB]


def sample(progress: int) -> dict:
    traced, _peak = tracemalloc.get_traced_memory()
    return {"sessions": progress, "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            "python_traced_mb": round(traced / 2**20, 1), **glibc_heap()}


def top_growth(before, after, n: int) -> list[dict]:
    stats = after.compare_to(before, "traceback")
    out = []
    for st in stats[:n]:
        frames = [f"{pathlib.Path(f.filename).name}:{f.lineno}" for f in st.traceback]
        out.append({"kb": round(st.size_diff / 1024, 1), "count": st.count_diff, "where": " <- ".join(reversed(frames))})
    return out


def profile(model: str, sessions: int, every: int, concurrency: int, from_session: int, top: int,
            frames: int = 4) -> dict:
    tracemalloc.start(frames)
    port = free_port()
    serve_in_thread(model, port)
    argv = [sys.executable, str(ROOT / "benchmarks" / "churn_bench.py"), "--witness", "--url",
            f"http://127.0.0.1:{port}", "--sessions", str(sessions), "--every", str(every),
            "--concurrency", str(concurrency), "--json"]
    rows, first = [], None
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as churn:
        for line in churn.stdout:
            msg = json.loads(line)
            if "progress" not in msg:
                result = msg
                continue
            rows.append({**sample(msg["progress"]), "witness_fps": msg.get("witness_fps")})
            if first is None and msg["progress"] >= from_session:
                first = tracemalloc.take_snapshot()
    last = tracemalloc.take_snapshot()
    return {"model": model, "sessions": sessions, "failures": result.get("failures"), "rows": rows,
            "top_growth": top_growth(first or last, last, top) if first is not None else [],
            "from_session": from_session}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="oracle", choices=["oracle", "tiny"])
    ap.add_argument("--sessions", type=int, default=600)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--from", dest="from_session", type=int, default=200, help="first snapshot at this session")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--frames", type=int, default=4,
                    help="traceback depth kept by tracemalloc (deeper is slower: at 12 the witness stalled)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if min(args.sessions, args.every, args.concurrency, args.top, args.frames) < 1:
        print("memory_profile: --sessions, --every, --concurrency, --top and --frames must be >= 1", file=sys.stderr)
        return 2
    out = profile(args.model, args.sessions, args.every, args.concurrency, args.from_session, args.top, args.frames)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
