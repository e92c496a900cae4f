"""The three research toggles on the shipped checkpoint: 8-bit vs 4-bit weights/activations x short vs long
window x KV off vs NVFP4 (plus the fp32 reference and fp8 KV), evaluated against the environment.

    python benchmarks/toggle_table.py --seeds 1,2,3 --steps 64 [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch

from worldlab.evaluate import evaluate
from worldlab.model import load_model

KEYS = ("psnr_step1", "psnr_mean", "psnr_tail", "ssim_mean", "agent_err_px", "switch_psnr", "kv_bytes", "model_ms_p50")


def rows(seeds, steps, checkpoint=None):
    configs = [("fp32", "short", "none"), ("fp32", "short", "fp8"), ("fp32", "short", "nvfp4")]
    configs += list(itertools.product(("w8a8", "w4a4"), ("short", "long"), ("none", "nvfp4")))
    for weights, window, kv in configs:
        r = evaluate(load_model(checkpoint, weights=weights, window=window, kv=kv), seeds, steps)
        yield {"weights": weights, "window": window, "kv": kv, **{k: r[k] for k in KEYS}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    table = list(rows(seeds, args.steps, args.checkpoint))
    if args.json:
        print(json.dumps(table))
        return 0
    print("| weights | window | KV | PSNR step 1 | PSNR mean | PSNR tail | SSIM | agent err px | switch PSNR | kv_bytes | model ms p50 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['weights']} | {r['window']} | {r['kv']} | {r['psnr_step1']:.2f} | {r['psnr_mean']:.2f} | "
              f"{r['psnr_tail']:.2f} | {r['ssim_mean']:.3f} | {r['agent_err_px']:.2f} | {r['switch_psnr']:.2f} | "
              f"{r['kv_bytes']} | {r['model_ms_p50']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
