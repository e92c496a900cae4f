"""Quantized vs fp32, teacher-forced: the share of predicted sprite corners that differ from fp32's.

A low-noise figure for choosing a quantization recipe: a rollout's PSNR moves in discrete jumps (one
object leaves its track), so ten seeds cannot separate recipes a few tenths of a dB apart; this counts
disagreements over 256 sequences x 24 frames x 3 sprites drawn like training data (seeds >= 1000, never
the evaluation seeds), in the parallel pass (both windows; the KV cache is not involved).
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from worldlab.kernels.linear import QuantRecipe
from worldlab.model import checkpoint as ckpt
from worldlab.model.quantize import RECIPES, QuantLinear, block_linears
from worldlab.train import make_batch

RANKS = (0, 16, 32, 48, 64)


def recipes(ranks=RANKS) -> dict[str, tuple[str, QuantRecipe]]:
    out = {"w8a8": RECIPES["w8a8"]}
    alpha = RECIPES["w4a4"][1].smooth_alpha
    out.update({f"w4a4 rank {r}": ("nvfp4", QuantRecipe(smooth_alpha=alpha, lowrank_rank=r)) for r in ranks})
    return out


def quantized_copy(net, calib, fmt: str, recipe: QuantRecipe):
    q = copy.deepcopy(net)
    for name, lin in block_linears(q).items():
        block, attr = name.rsplit(".", 1)
        setattr(q.get_submodule(block), attr, QuantLinear(lin, fmt, recipe, calib[name]))
    return q


def extra_params(net, rank: int) -> float:
    """Low-rank branch parameters (kept in 16/32-bit) as a share of the quantized weights."""
    lins = block_linears(net).values()
    return sum(rank * (lin.in_features + lin.out_features) for lin in lins) / sum(lin.weight.numel() for lin in lins)


@torch.no_grad()
def agreement(checkpoint=None, sequences: int = 256, ranks=RANKS) -> list[dict]:
    net, calib, _extra, _digest = ckpt.load(checkpoint)
    net.eval()
    rng = np.random.default_rng(12345)
    batches = [make_batch(net, net.cfg, rng, 32) for _ in range(max(1, sequences // 32))]

    def logits(n, window):
        return torch.cat([n.forward_seq(obs, a, th, window) for obs, _t, a, th in batches])

    windows = {w: net.cfg.window(w) for w in ("short", "long")}
    ref = {w: logits(net, f) for w, f in windows.items()}
    rows = []
    for name, (fmt, recipe) in recipes(ranks).items():
        q = quantized_copy(net, calib, fmt, recipe)
        row = {"recipe": name, "lowrank_params_share": round(extra_params(net, recipe.lowrank_rank), 3)}
        for w, f in windows.items():
            got = logits(q, f)
            differ = (q.positions(got) != net.positions(ref[w])).any(-1).float().mean()
            row[f"disagree_pct_{w}"] = round(100 * float(differ), 3)
            row[f"logit_rmse_{w}"] = round(float((got - ref[w]).pow(2).mean().sqrt()), 4)
        rows.append(row)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", help="a checkpoint (default: the shipped tiny)")
    ap.add_argument("--sequences", type=int, default=256, help="sequences of 24 frames (multiple of 32)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON document (default: a line per recipe)")
    args = ap.parse_args()
    if args.sequences < 32:
        raise SystemExit(f"quant_agreement: --sequences must be >= 32, got {args.sequences}")
    torch.set_num_threads(args.threads)
    try:
        result = agreement(args.checkpoint, args.sequences)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"quant_agreement: {exc}") from None
    if args.json:
        print(json.dumps(result))
    else:
        for row in result:
            print(row)
