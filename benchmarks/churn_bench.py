"""Churn a live `worldlab serve` (oracle model, loopback): open sessions and drop them in every way a real
client does, round-robin, then check the server reaps every room and peer and returns to its baseline.

Kinds: closed (pc.close() after connecting), killed (a client process SIGKILLed after connecting: only ICE
consent expiry tells the server), mid_handshake (the answer is received but never applied), no_candidates
(an offer with every candidate line removed: nobody ever connects). Reports how long after the last churned
session /healthz showed 0 rooms and 0 peers, and the server's RSS, fds and threads (psutil) against a
baseline taken after a warm-up round. With --witness, one session stays open the whole time (the server is
never empty, as in production): RSS every --every sessions, the witness's fps (a client in a process of its own,
so the churn's clients do not starve it) and longest frame gap, and the slope in MB/session. RSS is sampled
once the churned rooms are reaped and the server has run its next memory release (worldlab.allocator: every
few seconds after rooms close), so every sample is at the same point of that cycle; `rss_at_reap_mb` is the
figure before it.

    python benchmarks/churn_bench.py --sessions 500 --json
    python benchmarks/churn_bench.py --witness --sessions 2000 --concurrency 4 --json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import signal
import pathlib
import re
import sys
import tempfile
import time

import aiohttp
import psutil

from worldlab.transport.client import PeerClient
from worldlab.transport.shedding import RETRY_AFTER_S as SHED_RETRY_S

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` runs too
from benchmarks.serving import serving  # noqa: E402

KINDS = ("closed", "killed", "mid_handshake", "no_candidates")
# Limits of the server under test: all offers come from 127.0.0.1, so the per-IP offer limit is raised, and
# rooms whose peers are not yet reaped (up to ~30 s for `killed`) must not make new ones 503 server_full.
CHURN_CONFIG = {"offer_rate_per_s": 1000.0, "offer_burst": 1000, "max_sessions": 256}
REAP_GOAL_S = 60.0  # issue 12: every churned session reaped within this of the last one
# The warm-up must reach the churn's steady state (~30 s of sessions not yet reaped: ~100 live rooms at 8
# concurrent) or the baseline misses the allocator's high-water mark: measured, RSS then grows 0.2 % per round
# of 160 sessions after the first, against +485 % after a 20-session warm-up.
WARMUP_SESSIONS = 200


# -- the server under test -------------------------------------------------------------------------------
async def health(http, base: str) -> dict:
    async with http.get(f"{base}/healthz") as r:
        return await r.json()


def usage(proc: psutil.Process | None) -> dict:
    if proc is None:  # a server elsewhere (--url): nothing of its process to read
        return {}
    return {"rss_mb": round(proc.memory_info().rss / 2**20, 1), "fds": proc.num_fds(), "threads": proc.num_threads()}


# -- the four ways to drop a session ---------------------------------------------------------------------
BUSY_TRIES = 30  # a client refused with 503 server_busy (load shedding) waits its Retry-After and tries again


async def _until_admitted(attempt):
    """await attempt() again after each 503 server_busy, as a client honouring Retry-After does."""
    for _ in range(BUSY_TRIES - 1):
        try:
            return await attempt()
        except RuntimeError as exc:
            if "server_busy" not in str(exc):
                raise
            await asyncio.sleep(SHED_RETRY_S)
    return await attempt()


async def _connected_client(http, url: str) -> PeerClient:
    """A player connected through POST /offer (a fresh peer connection per attempt)."""
    async def attempt():
        client = PeerClient(keep_frames=False)
        try:
            await client.connect_http(http, url)
        except BaseException:
            await client.close()
            raise
        return client
    return await _until_admitted(attempt)


def _killable_client(url: str, conn) -> None:
    """In a child process: connect a player, say so, then wait to be SIGKILLed (no DTLS close ever sent)."""
    async def main():
        async with aiohttp.ClientSession() as http:
            await _connected_client(http, url)
            conn.send("connected")
            await asyncio.sleep(3600)

    asyncio.run(main())


def _witness_client(url: str, conn) -> None:
    """In a child process, so the churn's own clients do not starve it: one player that stays connected; on
    "read" it sends (frames received, every fps_actual the server reported since the last read (its new model
    frames a second, once a second), frame arrivals' largest gap in ms since then); on "close" it closes."""
    async def main():
        async with aiohttp.ClientSession() as http:
            client = PeerClient(keep_frames=False)
            await client.connect_http(http, url)
            await client.wait_for(lambda: client.n_frames > 10, 20)
            conn.send("connected")
            last_n, last_t, max_gap, last_stats = client.n_frames, time.monotonic(), 0.0, {}
            while True:
                await asyncio.sleep(0.005)
                if client.n_frames != last_n:
                    now = time.monotonic()
                    max_gap, last_n, last_t = max(max_gap, now - last_t), client.n_frames, now
                if conn.poll():
                    if conn.recv() == "close":
                        break
                    stats = [m for m in client.msgs if m["type"] == "stats"] or [last_stats]
                    last_stats = stats[-1]
                    fps = [m["fps_actual"] for m in stats if m.get("fps_actual") is not None]
                    conn.send((client.n_frames, fps, max_gap * 1000))
                    client.msgs.clear()
                    max_gap = 0.0
            await client.close()

    asyncio.run(main())


class Witness:
    """The witness session in its own process (see _witness_client)."""

    def __init__(self, procs, url: str):
        self.conn, there = procs.Pipe()
        self.proc = procs.Process(target=_witness_client, args=(url, there), daemon=True)
        self.proc.start()
        there.close()

    async def _ask(self, msg, timeout: float = 30.0):
        self.conn.send(msg)
        if not await asyncio.get_running_loop().run_in_executor(None, self.conn.poll, timeout):
            raise RuntimeError("the witness client did not answer")
        return self.conn.recv()

    async def connected(self) -> None:
        if not await asyncio.get_running_loop().run_in_executor(None, self.conn.poll, 40.0):
            raise RuntimeError("the witness client did not connect within 40 s")
        self.conn.recv()

    async def read(self) -> tuple[int, float | None, float]:
        return await self._ask("read")

    async def close(self) -> None:
        self.conn.send("close")
        await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 15.0)
        if self.proc.is_alive():
            self.proc.kill()


async def closed(http, url: str, procs) -> None:
    await (await _connected_client(http, url)).close()


async def killed(http, url: str, procs) -> None:
    here, there = procs.Pipe(duplex=False)
    child = procs.Process(target=_killable_client, args=(url, there), daemon=True)
    child.start()
    try:
        ok = await asyncio.get_running_loop().run_in_executor(None, here.poll, 30.0 + BUSY_TRIES * SHED_RETRY_S)
        if not ok:
            raise RuntimeError("the killable client did not connect")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.get_running_loop().run_in_executor(None, child.join)
        here.close()
        there.close()


async def _post_offer(http, url: str, sdp: str) -> dict:
    async with http.post(url, json={"sdp": sdp, "type": "offer"}) as r:
        ans = await r.json()
        if r.status != 200:
            raise RuntimeError(f"offer refused: {r.status} {ans}")
        return ans


async def mid_handshake(http, url: str, procs) -> None:
    client = PeerClient(keep_frames=False)
    try:
        sdp = await client.offer_sdp()
        await _until_admitted(lambda: _post_offer(http, url, sdp))
    finally:
        await client.close()  # the answer is never applied: the server's ICE checks meet closed sockets


def without_candidates(sdp: str) -> str:
    return "".join(ln for ln in sdp.splitlines(keepends=True)
                   if not ln.startswith(("a=candidate:", "a=end-of-candidates")))


async def no_candidates(http, url: str, procs) -> None:
    client = PeerClient(keep_frames=False)
    try:
        sdp = without_candidates(await client.offer_sdp())
    finally:
        await client.close()
    await _until_admitted(lambda: _post_offer(http, url, sdp))


DROPS = {"closed": closed, "killed": killed, "mid_handshake": mid_handshake, "no_candidates": no_candidates}


async def churn(http, url: str, n: int, concurrency: int, procs, kinds=KINDS) -> dict:
    """n sessions, `kinds` round-robin, `concurrency` at a time; per kind: ok count and failures."""
    gate, counts = asyncio.Semaphore(concurrency), collections.Counter()
    failures: list[str] = []

    async def one(i: int) -> None:
        kind = kinds[i % len(kinds)]
        async with gate:
            try:
                await DROPS[kind](http, url, procs)
                counts[kind] += 1
            except Exception as exc:
                failures.append(f"{kind}: {type(exc).__name__}: {exc}"[:200])

    await asyncio.gather(*(one(i) for i in range(n)))
    return {"counts": dict(counts), "failures": len(failures), "failure_sample": failures[:3]}


async def wait_reaped(http, base: str, timeout: float, keep: int = 0) -> tuple[float | None, dict]:
    """Seconds until /healthz shows at most `keep` rooms and peers (None if not within `timeout`), and the
    last body."""
    t0 = time.monotonic()
    while True:
        h = await health(http, base)
        if h["rooms"] <= keep and h["peers"] <= keep:
            return time.monotonic() - t0, h
        if time.monotonic() - t0 > timeout:
            return None, h
        await asyncio.sleep(0.5)


async def _metric(http, base: str, name: str) -> float:
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def releases(http, base: str) -> float:
    """worldlab_memory_releases_total from /metrics (passes freeing closed rooms' memory, worldlab.allocator)."""
    return await _metric(http, base, "worldlab_memory_releases_total")


async def release_totals(http, base: str) -> dict:
    """How many memory releases the server ran and their mean duration (each holds the GIL: a stall)."""
    n, s = await releases(http, base), await _metric(http, base, "worldlab_memory_release_seconds_total")
    return {"count": int(n), "mean_ms": round(1000 * s / n, 2) if n else None}


async def after_release(http, base: str, timeout: float = 15.0) -> None:
    """Wait for the server's next memory release (it runs every few seconds after rooms close), so samples are
    taken at the same point of its cycle; after `timeout` (releases off) go on."""
    n0, t0 = await releases(http, base), time.monotonic()
    while await releases(http, base) <= n0 and time.monotonic() - t0 < timeout:
        await asyncio.sleep(0.25)


async def settle(proc: psutil.Process, baseline: dict, timeout: float) -> dict:
    """The server's usage once fds and threads are back at the baseline, or whatever it is after `timeout`
    (the default executor's idle threads and closing sockets can take a moment to go)."""
    t0 = time.monotonic()
    while True:
        now = usage(proc)
        if now["fds"] <= baseline["fds"] and now["threads"] <= baseline["threads"] or time.monotonic() - t0 > timeout:
            return now
        await asyncio.sleep(0.5)


async def measure(base: str, proc: psutil.Process, sessions: int, warmup: int, concurrency: int,
                  reap_timeout: float, config: dict, kinds=KINDS) -> dict:
    procs = multiprocessing.get_context("forkserver")
    procs.set_forkserver_preload(["aiohttp", "worldlab.transport.client"])  # each killable client: a fork
    url = f"{base}/offer"
    # No keep-alive: pooled HTTP connections would count as the server's open fds.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        warm = await churn(http, url, warmup, concurrency, procs, kinds)
        await wait_reaped(http, base, reap_timeout)
        await after_release(http, base)
        baseline = usage(proc)
        t0 = time.monotonic()
        run = await churn(http, url, sessions, concurrency, procs, kinds)
        churn_s = time.monotonic() - t0
        reaped_s, h = await wait_reaped(http, base, reap_timeout)
        await after_release(http, base)
        after = await settle(proc, baseline, 20.0)
    return {
        "sessions": sessions, "concurrency": concurrency, "warmup_sessions": warmup, "churn_s": round(churn_s, 1),
        "per_kind": run["counts"], "failures": run["failures"], "failure_sample": run["failure_sample"],
        "warmup_failures": warm["failures"], "reaped_within_s": None if reaped_s is None else round(reaped_s, 1),
        "reap_goal_s": REAP_GOAL_S, "rooms_after": h["rooms"], "peers_after": h["peers"],
        "baseline": baseline, "after": after,
        "rss_growth_pct": round(100.0 * (after["rss_mb"] - baseline["rss_mb"]) / baseline["rss_mb"], 1),
        "server_config": config,
    }


# -- a witness: one session open through the whole run, so the server is never empty ----------------------
async def witnessed(base: str, proc: psutil.Process, sessions: int, every: int, concurrency: int,
                    reap_timeout: float, kinds=KINDS) -> dict:
    """Churn `sessions` in chunks of `every` while one witness session streams; after each chunk, once only the
    witness is left (killed clients take ~10 s of consent checks to reap): the server's RSS and the witness's
    fps over the chunk (frames it received, and the server's own fps_actual)."""
    procs = multiprocessing.get_context("forkserver")
    procs.set_forkserver_preload(["aiohttp", "worldlab.transport.client"])
    url = f"{base}/offer"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        witness = Witness(procs, url)
        await witness.connected()
        first = await churn(http, url, 1, 1, procs, kinds)
        await wait_reaped(http, base, reap_timeout, keep=1)
        await after_release(http, base)
        rows, failures, done = [{"sessions": 1, **usage(proc)}], first["failures"], 1
        if proc is None:
            print(json.dumps({"progress": 1}), flush=True)
        while done < sessions:
            n = min(every - done % every, sessions - done)
            (f0, _, _), t0 = await witness.read(), time.monotonic()
            run = await churn(http, url, n, concurrency, procs, kinds)
            done, failures = done + n, failures + run["failures"]
            f1, fps_actual, gap_ms = await witness.read()
            fps = (f1 - f0) / (time.monotonic() - t0)
            await wait_reaped(http, base, reap_timeout, keep=1)  # sample with only the witness left
            at_reap = usage(proc).get("rss_mb")
            await after_release(http, base)
            rows.append({"sessions": done, **usage(proc), "rss_at_reap_mb": at_reap, "witness_fps": round(fps, 2),
                         "witness_fps_actual": round(sum(fps_actual) / len(fps_actual), 1) if fps_actual else None,
                         "witness_fps_actual_min": min(fps_actual, default=None), "witness_max_gap_ms": round(gap_ms, 1)})
            if proc is None:  # for a profiler driving us: where we are
                print(json.dumps({"progress": done, "witness_fps": rows[-1]["witness_fps"]}), flush=True)
        await witness.close()
        reaped_s, h = await wait_reaped(http, base, reap_timeout)
        await after_release(http, base)
        empty = await settle(proc, rows[0], 20.0) if proc is not None else {}
        released = await release_totals(http, base)
        busy = int(await _metric(http, base, 'worldlab_cap_hits_total{code="server_busy"}'))
    if proc is None:
        return {"sessions": sessions, "failures": failures, "busy_refusals": busy, "rows": rows,
                "witness_fps_min": min(r["witness_fps"] for r in rows[1:]),
                "reaped_within_s": None if reaped_s is None else round(reaped_s, 1)}
    return {"sessions": sessions, "every": every, "concurrency": concurrency, "failures": failures,
            "busy_refusals": busy, "rows": rows, **rss_trend(rows), "witness_fps_min": min(r["witness_fps"] for r in rows[1:]),
            "witness_max_gap_ms": max(r["witness_max_gap_ms"] for r in rows[1:]), "releases": released,
            "reaped_within_s": None if reaped_s is None else round(reaped_s, 1), "rooms_after": h["rooms"],
            "peers_after": h["peers"], "empty": empty,
            "empty_vs_first_pct": round(100.0 * (empty["rss_mb"] - rows[0]["rss_mb"]) / rows[0]["rss_mb"], 1)}


def rss_trend(rows: list[dict], from_session: int = 200) -> dict:
    """Least-squares slope of RSS over sessions (MB per session) from `from_session` on, and the growth from
    the first row at or past it to the last."""
    import numpy as np

    tail = [r for r in rows if r["sessions"] >= from_session] or rows[-2:]
    x, y = np.array([r["sessions"] for r in tail], float), np.array([r["rss_mb"] for r in tail], float)
    slope = float(np.polyfit(x, y, 1)[0]) if len(tail) >= 2 and np.ptp(x) > 0 else float("nan")
    return {"slope_mb_per_session": round(slope, 5), "trend_from_session": int(x[0]),
            "rss_growth_pct": round(100.0 * (y[-1] - y[0]) / y[0], 2)}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus` (threads started later inherit it from their creator)."""
    for t in psutil.Process(pid).threads():
        try:
            os.sched_setaffinity(t.id, cpus)
        except OSError:  # the thread ended meanwhile
            pass


def run(sessions: int = 500, warmup: int = WARMUP_SESSIONS, concurrency: int = 8, reap_timeout: float = 120.0,
        *, witness: bool = False, every: int = 100, model: str = "oracle", url: str | None = None,
        release_interval_s: float | None = None, split_cores: bool = False, kinds=KINDS, shed: dict | None = None) -> dict:
    if url is not None:  # a server someone else runs (benchmarks/memory_profile.py): the witness run only
        return asyncio.run(witnessed(url.rstrip("/"), None, sessions, every, concurrency, reap_timeout, kinds))
    config = {**CHURN_CONFIG, **(shed or {})}
    if release_interval_s is not None:
        config["memory_release_interval_s"] = release_interval_s
    with tempfile.TemporaryDirectory(prefix="worldlab-churn-") as work, \
            serving(work, model=model, config=config) as (base, proc):
        if split_cores:  # the clients stand in for other machines: they must not take the server's core
            cores = sorted(os.sched_getaffinity(0))
            if len(cores) < 2:
                raise ValueError("--split-cores needs at least 2 cores")
            pin(proc.pid, {cores[0]})
            pin(os.getpid(), set(cores[1:]))
        if witness:
            out = asyncio.run(witnessed(base, proc, sessions, every, concurrency, reap_timeout, kinds))
        else:
            out = asyncio.run(measure(base, proc, sessions, warmup, concurrency, reap_timeout, config, kinds))
    return {"model": model, "split_cores": split_cores, "kinds": list(kinds), "shed": shed or {}, **out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=WARMUP_SESSIONS,
                    help="churned sessions before the baseline is taken")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--witness", action="store_true",
                    help="keep one session open throughout; RSS and its fps every --every sessions, and the slope")
    ap.add_argument("--every", type=int, default=100, help="with --witness: sessions between samples")
    ap.add_argument("--model", default="oracle", choices=["oracle", "tiny"])
    ap.add_argument("--url", default=None, help="with --witness: churn this running server instead of starting one")
    ap.add_argument("--release-interval", type=float, default=None, metavar="S",
                    help="the server's memory_release_interval_s (0: no release; default: the server's)")
    ap.add_argument("--split-cores", action="store_true",
                    help="the server on the first core, this process and every client on the others (as if the "
                         "clients were other machines); default: all share every core")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated drop kinds to churn, round-robin (default: all of {','.join(KINDS)})")
    ap.add_argument("--shed-below-fps", type=float, default=0.0, metavar="SHARE",
                    help="the server's shed_below_fps (load shedding: 503 server_busy while a live session gets "
                         "less than SHARE of its fps; refused clients retry after Retry-After; default 0: off)")
    ap.add_argument("--shed-model-load", type=float, default=0.0, metavar="SHARE",
                    help="the server's shed_model_load (503 server_busy while the model would be busier than SHARE "
                         "with one more session; default 0: off)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or set(kinds) - set(KINDS):
        print(f"churn_bench: --kinds takes some of {', '.join(KINDS)}, got {args.kinds!r}", file=sys.stderr)
        return 2
    if min(args.sessions, args.every, args.concurrency) < 1 or args.warmup < 0 or (args.release_interval or 0) < 0:
        print("churn_bench: --sessions, --every and --concurrency must be >= 1, --warmup and --release-interval "
              ">= 0", file=sys.stderr)
        return 2
    if not (0 <= args.shed_below_fps <= 1 and 0 <= args.shed_model_load <= 1):
        print("churn_bench: --shed-below-fps and --shed-model-load take a share between 0 (off) and 1",
              file=sys.stderr)
        return 2
    if args.url and not args.witness:
        print("churn_bench: --url needs --witness", file=sys.stderr)
        return 2
    out = run(args.sessions, args.warmup, args.concurrency, witness=args.witness, every=args.every,
              model=args.model, url=args.url, release_interval_s=args.release_interval,
              split_cores=args.split_cores, kinds=kinds,
              shed={k: v for k, v in (("shed_below_fps", args.shed_below_fps),
                                      ("shed_model_load", args.shed_model_load)) if v})
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
