"""Provenance watermark figures: id bit accuracy on recorded streams and re-encodes, false positives, PSNR, speed.

Clips are 3 s of the procedural world, watermarked and encoded by the server's own RoomEncoder at a quality rung
(what a recording of the live stream is), muxed to WebM and decoded back as `worldlab verify` does.
    python benchmarks/watermark_bench.py [--clips 20] [--clean 50] [--json]
"""

from __future__ import annotations

import argparse
import fractions
import json
import pathlib
import sys
import tempfile
import time

import av
import numpy as np

from worldlab import env
from worldlab.commands.verify_cmd import iter_lumas
from worldlab.security.watermark import ID_BITS, Embedder, Watermark
from worldlab.transport.encoder import RoomEncoder
from worldlab.transport.quality import LADDER, upscale
from worldlab.transport.track import VIDEO_CLOCK

FPS = 30
CLIP_FRAMES = 3 * FPS  # the shortest clip `worldlab verify` is specified for
REENCODE_BITRATE = 300_000
REENCODERS = {"vp8": "libvpx", "h264": "libx264"}
RUNGS = ("128p-lean", "256p")  # the quality rungs docs/security.md reports (the former "low" and "high")


def world_frames(seed: int, rung: str = RUNGS[0], n: int = CLIP_FRAMES) -> np.ndarray:
    """(n, H, W, 3) uint8: a rollout with human-like keys, theme by seed, upscaled as RoomTrack does."""
    theme = env.THEMES[seed % len(env.THEMES)]
    frames = env.rollout(seed, theme, env.random_actions(n - 1, seed))
    return upscale(frames, LADDER[rung].height)


def stream(frames: np.ndarray, wm_id: int | None, rung: str = RUNGS[0], codec: str = "vp8") -> list:
    """The live stream's packets: each frame watermarked (unless wm_id is None), then RoomEncoder at the rung."""
    mark = Embedder(wm_id) if wm_id is not None else None
    enc = RoomEncoder(codec, fps=FPS)
    packets = []
    for i, f in enumerate(frames):
        p = enc.encode(mark(f) if mark else f, i * VIDEO_CLOCK // FPS, LADDER[rung].bitrate)
        if p is not None:
            packets.append(p)
    return packets


def write_clip(packets: list, path: pathlib.Path, size: tuple[int, int], codec: str = "vp8") -> pathlib.Path:
    """Mux already-encoded packets (a recording: no re-encode) into a WebM/Matroska/IVF file."""
    with av.open(str(path), "w") as out:
        st = out.add_stream(REENCODERS[codec], rate=FPS)
        st.width, st.height, st.pix_fmt = size[1], size[0], "yuv420p"
        st.time_base = fractions.Fraction(1, FPS)
        for i, p in enumerate(packets):
            q = av.Packet(bytes(p))
            q.stream, q.pts, q.dts, q.time_base = st, i, i, st.time_base
            out.mux(q)
    return path


def reencode(src: pathlib.Path, dst: pathlib.Path, bitrate: int = REENCODE_BITRATE, codec: str = "h264"):
    """Decode `src` and encode it again at `bitrate` (someone re-sharing a recorded clip)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        st = None
        for frame in inp.decode(video=0):
            if st is None:
                st = out.add_stream(REENCODERS[codec], rate=FPS)
                st.width, st.height, st.pix_fmt, st.bit_rate = frame.width, frame.height, "yuv420p", bitrate
            frame.pts = None
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return dst


def bit_errors(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def marked_clips(n: int, rung: str, tmp: pathlib.Path) -> dict:
    """Bit errors and found/correct counts on n watermarked clips, as recorded and after each re-encode."""
    rng = np.random.default_rng(12)
    wm, stages = Watermark(), {"recorded": [], **{f"reencoded_{c}": [] for c in REENCODERS}}
    for seed in range(n):
        wm_id = int(rng.integers(0, 1 << 63)) * 2 + int(rng.integers(0, 2))  # the full 64-bit range
        frames = world_frames(seed, rung)
        clip = write_clip(stream(frames, wm_id, rung), tmp / f"m{seed}.webm", frames.shape[1:3])
        paths = {"recorded": clip, **{f"reencoded_{c}": reencode(clip, tmp / f"m{seed}_{c}.mkv", codec=c)
                                      for c in REENCODERS}}
        for stage, path in paths.items():
            d = wm.detect(iter_lumas(str(path)))
            kbps = path.stat().st_size * 8 / 1000 / (len(frames) / FPS)  # what the encoder really spent
            stages[stage].append((bit_errors(d.raw_id, wm_id), d.found and d.watermark_id == wm_id, d.found, kbps))
    return {stage: {"clips": len(rows), "bit_accuracy": 1 - sum(r[0] for r in rows) / (ID_BITS * len(rows)),
                    "exact_id": sum(r[1] for r in rows), "found": sum(r[2] for r in rows),
                    "kbps": float(np.mean([r[3] for r in rows]))}
            for stage, rows in stages.items()}


def clean_clips(n: int, tmp: pathlib.Path) -> dict:
    """False positives: clips that never carried a watermark, through the same low-rung encoding."""
    wm, found, zs = Watermark(), 0, []
    for seed in range(1000, 1000 + n):
        frames = world_frames(seed)
        d = wm.detect(iter_lumas(str(write_clip(stream(frames, None), tmp / f"c{seed}.webm", frames.shape[1:3]))))
        found += d.found
        zs.append(d.mean_z)
    return {"clips": n, "false_positives": found, "max_mean_z": max(zs)}


def cost(n: int = 10) -> dict:
    """PSNR of the embedding (mean and min over frames) and embed ms per frame, per rung."""
    out = {}
    for rung in RUNGS:
        mark = Embedder(0x0123456789ABCDEF)
        frames = np.concatenate([world_frames(seed, rung) for seed in range(n)])
        values = [psnr(f, mark(f)) for f in frames]
        t0 = time.perf_counter()
        for f in frames:
            mark(f)
        ms = (time.perf_counter() - t0) * 1000 / len(frames)
        out[rung] = {"size": frames.shape[1], "psnr_mean_db": float(np.mean(values)),
                     "psnr_min_db": float(np.min(values)), "embed_ms": ms, "frames": len(frames)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20, help="watermarked clips per rung")
    ap.add_argument("--clean", type=int, default=50, help="clean clips for the false-positive count")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        result = {"marked": {rung: marked_clips(args.clips, rung, tmp) for rung in RUNGS},
                  "clean": clean_clips(args.clean, tmp), "cost": cost()}
    result["seconds"] = time.perf_counter() - t0
    for rung, stages in result["marked"].items():
        for stage, r in stages.items():
            print(f"{rung:5s} {stage:15s} {r['kbps']:4.0f} kbit/s  clips {r['clips']:3d}  raw bit accuracy "
                  f"{100 * r['bit_accuracy']:6.2f} %  exact id {r['exact_id']:3d}  found {r['found']:3d}")
    c = result["clean"]
    print(f"clean clips {c['clips']}: false positives {c['false_positives']} (max mean |z| {c['max_mean_z']:.2f})")
    for rung, r in result["cost"].items():
        print(f"{rung:5s} {r['size']}px  PSNR mean {r['psnr_mean_db']:.2f} dB  min {r['psnr_min_db']:.2f} dB  "
              f"embed {r['embed_ms']:.3f} ms/frame")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
