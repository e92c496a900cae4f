"""The three research toggles on the shipped checkpoint: 8-bit vs 4-bit weights/activations x short vs long
window x KV off vs NVFP4 (plus fp8 KV on the fp32 reference), evaluated against the environment.

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

# PSNRs are pooled (PSNR of the mean MSE); occlusion_psnr scores the frames where a hidden object re-emerges
# after 9 hidden frames: past the short window (6 frames), within the long one (16).
KEYS = ("psnr_step1", "psnr_mean", "psnr_tail", "ssim_mean", "agent_err_px", "switch_psnr", "occlusion_psnr",
        "kv_bytes", "model_ms_p50")
COLUMNS = ("PSNR step 1", "PSNR mean", "PSNR tail", "SSIM", "agent err px", "switch PSNR", "occlusion PSNR",
           "kv_bytes", "model ms p50")
FORMATS = (".2f", ".2f", ".2f", ".3f", ".2f", ".2f", ".2f", "d", ".2f")


def rows(seeds, steps, checkpoint=None):
    configs = list(itertools.product(("fp32", "w8a8", "w4a4"), ("short", "long"), ("none", "nvfp4")))
    configs.insert(1, ("fp32", "short", "fp8"))
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
    print("| weights | window | KV | " + " | ".join(COLUMNS) + " |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    for r in table:
        cells = [r["weights"], r["window"], r["kv"]] + [format(r[k], f) for k, f in zip(KEYS, FORMATS)]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
