"""The model step and a live session on a busy CPU: quiet, then beside N CPU-hog processes (busy loops, as a
browser decoding video or a build would be), for N = cores and 2 x cores; reports loaded / quiet for the step's
p50 and p95, with the thread rule (worldlab.threads) and with torch's own default (one thread per core), and
the frames per second a live 30-fps session of `worldlab serve` delivers to a client.

    python benchmarks/load_bench.py --json
    python benchmarks/load_bench.py --model doom --hogs 0,2 --steps 100 --session-s 0 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` runs too
from benchmarks.serving import serving  # noqa: E402
from worldlab import threads  # noqa: E402
from worldlab.experiments.provenance import cpu_model  # noqa: E402

# The hog leaves an inherited real-time policy itself, first thing: a preexec_fn would do it in the forked child
# of a threaded parent, where it can deadlock (seen in CI: Popen hung reading the child's error pipe).
HOG = "import os; os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))\nwhile True: pass"


def _ordinary() -> None:
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@contextlib.contextmanager
def ordinary_scheduling():
    """Run the calling thread (and what it spawns) under the normal time-sharing policy for the measurement.
    Found in CI: the test process ran SCHED_FIFO 99, which its children inherit; a real-time busy loop never
    yields its core, so hogs and a real-time measurer starved each other for good."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    if policy != os.SCHED_OTHER:
        _ordinary()
    try:
        yield policy
    finally:
        if policy != os.SCHED_OTHER:
            os.sched_setscheduler(0, policy, param)


@contextlib.contextmanager
def hogs(n: int):
    """n busy-loop processes under the normal time-sharing policy, always stopped."""
    procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(n)]
    try:
        time.sleep(0.3 if n else 0)  # let them take their cores
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def time_steps(model, steps: int) -> dict:
    """Batch-1 step percentiles (ms) of `model`, as `worldlab bench` times them."""
    from worldlab.bench_model import bench

    out = bench(model, steps=steps, batches=())
    return {"p50": round(out["model_ms_p50"], 3), "p95": round(out["model_ms_p95"], 3)}


def step_rows(model_name: str, hog_counts: list[int], steps: int, settings: dict) -> list[dict]:
    """One row per (thread setting, hogs); settings: label -> torch threads."""
    from worldlab.config import Toggles
    from worldlab.model.registry import resolve

    model = resolve(model_name).build(Toggles(), "cpu", None)
    rows = []
    for label, n_threads in settings.items():
        threads.for_inference(n_threads)
        time_steps(model, 10)  # warm-up at this thread count
        quiet = None
        for n in hog_counts:
            with hogs(n):
                t = time_steps(model, steps)
            quiet = quiet or (t if n == 0 else None)
            rows.append({"threads": label, "torch_threads": n_threads, "hogs": n, **t})
        for r in rows:
            if r["threads"] == label and quiet:
                r["p50_ratio"] = round(r["p50"] / quiet["p50"], 2)
                r["p95_ratio"] = round(r["p95"] / quiet["p95"], 2)
    return rows


async def _watch(port: int, seconds: float) -> dict:
    """A client on a live session holding a key for `seconds`: frames received per second, and the server's
    own fps_actual from its stats messages."""
    import aiohttp

    from worldlab.transport.client import PeerClient

    async with aiohttp.ClientSession() as http:
        client = PeerClient(keep_frames=False)
        await client.connect_http(http, f"http://127.0.0.1:{port}/offer")
        try:
            await client.wait_for(lambda: client.n_frames > 30, 20)
            client.send(type="action", keys=["left"])
            n0, t0 = client.n_frames, time.monotonic()
            await asyncio.sleep(seconds)
            fps = (client.n_frames - n0) / (time.monotonic() - t0)
            server = [m["fps_actual"] for m in client.msgs if m["type"] == "stats" and m.get("fps_actual")]
        finally:
            await client.close()
    return {"fps_received": round(fps, 2), "fps_server_last": server[-1] if server else None}


def session_rows(model_name: str, hog_counts: list[int], seconds: float, serve_threads: int | None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as work, serving(work, model=model_name,
                                                        extra_args=_threads_args(serve_threads)) as (base, _proc):
        port = int(base.rsplit(":", 1)[1])
        for n in hog_counts:
            with hogs(n):
                out = asyncio.run(asyncio.wait_for(_watch(port, seconds), seconds + 60))
            rows.append({"hogs": n, "serve_threads": serve_threads or threads.INFERENCE_THREADS, **out})
    return rows


def _threads_args(n: int | None) -> list[str]:
    return [] if n is None else ["--threads", str(n)]


def measure(model: str = "tiny", hog_counts=None, steps: int = 300, session_s: float = 10.0,
            before: bool = True) -> dict:
    """before: also measure torch's own default (one thread per core), as every path but serve ran before."""
    cores = threads.cores()
    settings = {"rule": threads.INFERENCE_THREADS, **({"torch_default": cores} if before else {})}
    hog_counts = [0, cores, 2 * cores] if hog_counts is None else hog_counts
    if 0 not in hog_counts:
        raise ValueError("--hogs must include 0 (the quiet baseline the ratios are taken against)")
    with ordinary_scheduling() as policy:
        out = {"model": model, "cores": cores, "machine": cpu_model(), "hogs": hog_counts, "steps": steps,
               "caller_policy": policy, "step": step_rows(model, hog_counts, steps, settings)}
        if session_s > 0:
            live_hogs = [n for n in hog_counts if n <= cores]
            out["session"] = {label: session_rows(model, live_hogs, session_s, None if label == "rule" else n)
                              for label, n in settings.items()}
    return out


def _counts(text: str) -> list[int]:
    try:
        counts = [int(h) for h in text.split(",")]
    except ValueError:
        raise ValueError(f"--hogs must be comma-separated counts, got {text!r}") from None
    if min(counts) < 0:
        raise ValueError("--hogs must be counts >= 0")
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="what --model takes (default tiny)")
    ap.add_argument("--hogs", default=None, help="comma-separated hog counts, 0 first (default 0,cores,2xcores)")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per row (>= 10)")
    ap.add_argument("--session-s", type=float, default=10.0, help="seconds of live session per row (0: skip)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        hog_counts = None if args.hogs is None else _counts(args.hogs)
        out = measure(args.model, hog_counts, args.steps, args.session_s)
    except ValueError as exc:
        print(f"load_bench: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
