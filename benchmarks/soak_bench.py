"""Soak: N sessions on `worldlab serve` (the shipped tiny model) for M minutes, steered with keys and a
prompt switch a minute, sampled every few seconds: server RSS (drift from the first minute to the end),
each session's fps_actual and kv_bytes from its `stats` messages (the KV cache must stay flat).

    python benchmarks/soak_bench.py --sessions 4 --minutes 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import pathlib
import sys
import tempfile
import time

import aiohttp
import psutil

from worldlab.transport.client import PeerClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` runs too
from benchmarks.serving import serving  # noqa: E402

PROMPTS = ["a walk in the forest", "a snowy day", "a sunny desert", "a walk at night"]


def last_stats(client: PeerClient) -> dict:
    return next((m for m in reversed(client.msgs) if m["type"] == "stats"), {})


async def soak(port: int, proc: psutil.Process, sessions: int, seconds: float, sample_s: float) -> dict:
    rng = random.Random(0)
    async with aiohttp.ClientSession() as http:
        clients = [PeerClient(keep_frames=False) for _ in range(sessions)]
        for c in clients:
            await c.connect_http(http, f"http://127.0.0.1:{port}/offer")
        t0, samples, next_prompt = time.monotonic(), [], 60.0
        while (t := time.monotonic() - t0) < seconds:
            for c in clients:  # a held key changes now and then, as a person plays
                if rng.random() < 0.3:
                    c.send(type="action", keys=[rng.choice(["left", "right", "up", "down"])] if rng.random() < 0.8 else [])
            if t >= next_prompt:
                for i, c in enumerate(clients):
                    c.send(type="prompt", text=PROMPTS[(int(t // 60) + i) % len(PROMPTS)])
                next_prompt += 60.0
            if not samples or t - samples[-1]["t"] >= sample_s:
                st = [last_stats(c) for c in clients]
                samples.append({"t": round(t, 1), "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                                "fps": [s.get("fps_actual") for s in st], "kv_bytes": [s.get("kv_bytes") for s in st]})
            await asyncio.sleep(0.5)
        for c in clients:
            await c.close()
    return summarize(samples)


def summarize(samples: list[dict]) -> dict:
    warm = [s for s in samples if s["t"] >= 60] or samples[len(samples) // 2:]
    base = warm[0]["rss_mb"]
    fps = [f for s in warm for f in s["fps"] if f is not None]
    kv = {k for s in warm for k in s["kv_bytes"] if k is not None}
    return {"rss_mb_first_minute_end": base, "rss_mb_end": samples[-1]["rss_mb"],
            "rss_drift_pct": round(100 * (samples[-1]["rss_mb"] - base) / base, 2),
            "fps_actual_min": min(fps) if fps else None, "fps_actual_mean": round(sum(fps) / len(fps), 2) if fps else None,
            "kv_bytes_values_after_warmup": sorted(kv), "samples": samples}


def measure(sessions: int = 4, minutes: float = 10.0, model: str = "tiny", sample_s: float = 10.0) -> dict:
    with tempfile.TemporaryDirectory() as work, serving(work, model=model) as (base, proc):
        run = soak(int(base.rsplit(":", 1)[1]), proc, sessions, minutes * 60, sample_s)
        out = asyncio.run(asyncio.wait_for(run, minutes * 60 + 120))  # set-up and close are bounded too
    return {"sessions": sessions, "minutes": minutes, "model": model, **out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--model", default="tiny", choices=["tiny", "oracle"])
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = measure(args.sessions, args.minutes, args.model, args.sample)
    print(json.dumps(out) if args.json else json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
