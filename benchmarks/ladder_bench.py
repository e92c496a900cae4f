"""The adaptive quality ladder under an injected slowdown: one live room (oracle model, in-process aiortc
client) starts at the top rung; a load is switched on, then off. Reports the time to step down, fps_actual
during the load once stepped down, and the time until the top rung returns (issue 13's 2 s / >= 27 / 10 s).

    python benchmarks/ladder_bench.py --json                 # encode slowdown (grows with the pixels)
    python benchmarks/ladder_bench.py --load hog --hogs 2    # CPU hog processes instead
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time

from worldlab.engine import Scheduler
from worldlab.engine.oracle import EnvOracle
from worldlab.transport.client import PeerClient
from worldlab.transport.encoder import RoomEncoder
from worldlab.transport.peer import PeerHub
from worldlab.transport.quality import LADDER

ENCODE_MS_AT_TOP = 45.0  # the slow encoder at the top rung: past the 33 ms slot; x (pixels ratio)^2 below it


class SlowEncoder:
    """While on, RoomEncoder.encode sleeps ENCODE_MS_AT_TOP x (pixels / top pixels)^2 first."""

    def __init__(self):
        self.on = False
        self._real = RoomEncoder.encode
        top = LADDER.top.height ** 2
        real = self._real

        def encode(enc, rgb, *args, **kw):
            if self.on:
                time.sleep(ENCODE_MS_AT_TOP / 1000 * (rgb.shape[0] * rgb.shape[1] / top) ** 2)
            return real(enc, rgb, *args, **kw)

        RoomEncoder.encode = encode

    def start(self):
        self.on = True

    def stop(self):
        self.on = False

    def restore(self):
        RoomEncoder.encode = self._real


def _burn():
    while True:
        pass


class CpuHog:
    def __init__(self, n: int):
        self.n, self.procs = n, []

    def start(self):
        self.procs = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()

    def stop(self):
        for p in self.procs:
            p.terminate()
            p.join()
        self.procs = []

    def restore(self):
        self.stop()


async def wait_for(pred, timeout: float) -> float | None:
    """Seconds until pred() holds (polled every 20 ms), or None after timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    return None


async def one_run(load, load_s: float, settle_s: float) -> dict:
    model = EnvOracle(seed=1)
    sched = Scheduler(model).start()
    hub = PeerHub(model, sched, fps=30.0)
    client = PeerClient(keep_frames=False)
    try:
        room = hub.rooms[(await client.connect(hub))["room"]]
        top = LADDER.top.name
        await asyncio.sleep(hub.cfg.quality_warmup_s + 1)
        if await wait_for(lambda: room.track.rung == top, 30) is None:
            return {"error": "the room never reached the top rung before the load"}
        path = [(0.0, room.track.rung)]
        load.start()
        t_on = time.monotonic()
        down_s = await wait_for(lambda: room.track.rung != top, load_s)
        fps = []
        if down_s is not None:
            path.append((round(down_s, 2), room.track.rung))
            await asyncio.sleep(settle_s)  # the 2 s fps window moves past the top rung's frames
            while time.monotonic() - t_on < load_s:
                fps.append(room.stats()["fps_actual"])
                if room.track.rung != path[-1][1]:
                    path.append((round(time.monotonic() - t_on, 2), room.track.rung))
                await asyncio.sleep(0.25)
        path.append((round(time.monotonic() - t_on, 2), room.track.rung))
        load.stop()
        t_off = time.monotonic()
        up_s = await wait_for(lambda: room.track.rung == top, 30)
        lowest = min((r for _t, r in path), key=lambda name: LADDER.rungs.index(LADDER[name]))
        return {"down_s": down_s, "up_s": up_s, "lowest_rung": lowest,
                "fps_load_min": min(fps) if fps else None, "fps_load_median": statistics.median(fps) if fps else None,
                "path": path, "load_off_at_s": round(t_off - t_on, 2)}
    finally:
        await client.close()
        await hub.close()
        sched.stop()


async def main_async(args) -> dict:
    load = SlowEncoder() if args.load == "encode" else CpuHog(args.hogs)
    try:
        runs = [await one_run(load, args.load_s, args.settle_s) for _ in range(args.runs)]
    finally:
        load.restore()
    ok = [r for r in runs if "error" not in r]

    def figure(key, fn):
        vals = [r[key] for r in ok if r.get(key) is not None]
        return fn(vals) if vals else None

    return {"load": args.load, "runs": runs, "down_s_max": figure("down_s", max),
            "up_s_max": figure("up_s", max), "fps_load_min": figure("fps_load_min", min),
            "stepped_down": sum(r.get("down_s") is not None for r in ok), "returned_top": sum(
                r.get("up_s") is not None for r in ok), "n": len(runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", choices=("encode", "hog"), default="encode")
    ap.add_argument("--hogs", type=int, default=2, help="busy processes for --load hog")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--load-s", type=float, default=10.0, help="how long the load stays on")
    ap.add_argument("--settle-s", type=float, default=2.0, help="after stepping down, before sampling fps")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(out))
        return
    for i, r in enumerate(out["runs"]):
        print(f"run {i}: {r}")
    print(f"{out['load']}: stepped down {out['stepped_down']}/{out['n']} (max {out['down_s_max']} s), "
          f"fps during load min {out['fps_load_min']}, top rung back {out['returned_top']}/{out['n']} "
          f"(max {out['up_s_max']} s)")


if __name__ == "__main__":
    main()
