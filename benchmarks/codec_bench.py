"""Encode time per frame of each room codec (worldlab.transport.encoder.RoomEncoder): a moving synthetic scene
at one rung's size and bitrate, one thread, p50 / p90 ms and bytes a frame; prints one JSON line."""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from worldlab.config import CODECS
from worldlab.engine.metrics import percentile
from worldlab.transport.encoder import RoomEncoder


def scene(i: int, size: int) -> np.ndarray:
    """A flat background with a gradient and two moving blocks: the kind of picture the world model makes."""
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([(x * 255 // size), (y * 255 // size), np.full_like(x, 90)], -1).astype(np.uint8)
    b = size // 10
    for k, (vx, vy) in enumerate(((3, 2), (-2, 3))):
        cx, cy = (i * vx + k * size // 2) % (size - b), (i * vy + k * size // 3) % (size - b)
        img[cy:cy + b, cx:cx + b] = (230, 60 + 120 * k, 40)
    return img


def measure(codec: str, size: int, bitrate: int, frames: int) -> dict:
    enc = RoomEncoder(codec, fps=30.0)
    ms, sizes = [], []
    for i in range(frames + 1):
        img = scene(i, size)
        t0 = time.perf_counter()
        packet = enc.encode(img, i * 3000, bitrate)
        if i:  # the first frame opens the encoder: not a steady-state frame
            ms.append((time.perf_counter() - t0) * 1000)
            sizes.append(packet.size)
    return {"encode_ms_p50": percentile(ms, 50), "encode_ms_p90": percentile(ms, 90),
            "bytes_per_frame": float(np.mean(sizes)), "frames": frames}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="frame height = width (px), default 256")
    ap.add_argument("--bitrate", type=int, default=800_000, help="bit/s, default 800000 (the 256p rung)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--codecs", default=",".join(CODECS), help=f"comma-separated, of {CODECS}")
    ap.add_argument("--json", action="store_true", help="(the output is always one JSON line)")
    args = ap.parse_args(argv)
    codecs = args.codecs.split(",")
    bad = [c for c in codecs if c not in CODECS]
    if bad or not 64 <= args.size <= 2160 or args.frames < 10 or args.bitrate < 10_000:
        ap.error(f"--codecs must be of {CODECS}, --size 64..2160, --frames >= 10, --bitrate >= 10000")
    out = {c: measure(c, args.size, args.bitrate, args.frames) for c in codecs}
    print(json.dumps({"size": args.size, "bitrate": args.bitrate, "threads": 1, "machine": platform.processor()
                      or platform.machine(), "codecs": out}))


if __name__ == "__main__":
    main()
