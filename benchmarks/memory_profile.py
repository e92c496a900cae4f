"""Where a churned server's memory goes: `worldlab serve`'s app (with serve's allocator settings) runs in this
process while benchmarks/churn_bench.py (a subprocess) keeps a witness session open and churns sessions through
it. At each progress line: RSS, the bytes Python allocated (tracemalloc, --frames > 0), and glibc's own view
(mallinfo2: bytes in use and bytes free but kept in its arenas). At the end: which object types grew between
the first sample past --from and the last (a Python-level leak shows by name), and, once the server is empty,
the unreachable cycles still waiting for the collector by type and the heap their collection frees (how the
closed rooms' memory was found to wait for gc: docs/streaming.md "Memory under churn").

Counting objects walks the heap from this thread while the server's threads run; it collects garbage first,
so it is a diagnostic, not a figure of the shipped server (churn_bench.py --witness is that).

    python benchmarks/memory_profile.py --sessions 300 --frames 0 --json
    MALLOC_ARENA_MAX=8 python benchmarks/memory_profile.py --sessions 600 --json   # try an allocator setting
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
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

    from worldlab import allocator
    from worldlab.config import SessionConfig, Toggles
    from worldlab.model.registry import resolve
    from worldlab.server import build_app
    from worldlab.server.app import HUB

    cfg = SessionConfig(**CHURN_CONFIG)
    allocator.cap_arenas(cfg.malloc_arena_max)  # as `worldlab serve` does
    model = resolve(model_name).build(Toggles(), "cpu", None)
    app = build_app(model, host="127.0.0.1", config=cfg)
    allocator.freeze_startup()
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


def object_counts() -> collections.Counter:
    """Live objects tracked by the garbage collector, by type name, after a full collection."""
    gc.collect()
    return collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def count_growth(before: collections.Counter, after: collections.Counter, n: int) -> list[dict]:
    grown = sorted(((after[k] - before[k], k) for k in after if after[k] > before[k]), reverse=True)
    return [{"type": k, "grew_by": d, "now": after[k]} for d, k in grown[:n]]


def cyclic_garbage(n: int) -> list[dict]:
    """Collect, keeping what was collected (gc.DEBUG_SAVEALL): the unreachable objects by type, most first."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        counts = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    gc.collect()
    return [{"type": k, "count": c} for k, c in counts.most_common(n)]


def top_growth(before, after, n: int) -> list[dict]:
    stats = after.compare_to(before, "traceback")
    out = []
    for st in stats[:n]:
        frames = [f"{pathlib.Path(f.filename).name}:{f.lineno}" for f in st.traceback]
        out.append({"kb": round(st.size_diff / 1024, 1), "count": st.count_diff, "where": " <- ".join(reversed(frames))})
    return out


def profile(model: str, sessions: int, every: int, concurrency: int, from_session: int, top: int,
            frames: int = 4) -> dict:
    if frames:
        tracemalloc.start(frames)
    port = free_port()
    serve_in_thread(model, port)
    argv = [sys.executable, str(ROOT / "benchmarks" / "churn_bench.py"), "--witness", "--url",
            f"http://127.0.0.1:{port}", "--sessions", str(sessions), "--every", str(every),
            "--concurrency", str(concurrency), "--json"]
    rows, first, counts, last_counts = [], None, None, None
    rows_counts_first = object_counts()  # before any session
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as churn:
        for line in churn.stdout:
            msg = json.loads(line)
            if "progress" not in msg:
                result = msg
                continue
            rows.append({**sample(msg["progress"]), "witness_fps": msg.get("witness_fps")})
            if counts is None and msg["progress"] >= from_session:
                counts = object_counts()
                first = tracemalloc.take_snapshot() if frames else None
            last_counts = object_counts() if counts is not None else None
    last = tracemalloc.take_snapshot() if frames else None
    rows.append({**sample(sessions), "empty": True})  # the churn ends after the server's release, all rooms gone
    waiting = cyclic_garbage(top)
    rows.append({**sample(sessions), "empty": True, "after_collecting_here": True})
    empty_counts = object_counts()
    return {"model": model, "sessions": sessions, "failures": result.get("failures"), "rows": rows,
            "top_growth": top_growth(first, last, top) if first is not None else [],
            "object_growth": count_growth(counts, last_counts, top) if counts is not None else [],
            "object_growth_empty": count_growth(rows_counts_first, empty_counts, top), "cyclic_garbage": waiting,
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
                    help="traceback depth kept by tracemalloc, 0 = off (deeper is slower: at 12 the witness stalled)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if min(args.sessions, args.every, args.concurrency, args.top) < 1 or args.frames < 0:
        print("memory_profile: --sessions, --every, --concurrency, --top must be >= 1 and --frames >= 0", file=sys.stderr)
        return 2
    out = profile(args.model, args.sessions, args.every, args.concurrency, args.from_session, args.top, args.frames)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
