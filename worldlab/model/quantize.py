"""Build the quantized variants of a trained fp32 model: weights/activations W8A8 (FP8) or W4A4 (NVFP4).

Linear layers inside the transformer blocks are swapped for QuantLinear; the patch embedding and the
patch decoder stay fp32 (first/last layers, as is usual for low-bit inference).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from worldlab.config import TOGGLE_CHOICES
from worldlab.kernels.linear import QuantRecipe, quantize_weight, quantized_linear

WEIGHTS = TOGGLE_CHOICES["weights"]
# W4A4: smoothing 0.5 (the best measured by worldlab.kernels.bench) + a rank-48 low-rank branch. At d_model 128
# the rank is what buys fidelity: teacher-forced disagreement with fp32 falls 2.3 / 1.6 / 1.2 / 0.9 % at rank
# 0 / 32 / 48 / 64 (long window; benchmarks/quant_agreement.py), and 48 is the smallest within 1 dB of fp32's
# rollouts (docs/model.md); its branch holds half as many 16-bit parameters as the 4-bit weights.
RECIPES = {"w8a8": ("fp8", QuantRecipe()), "w4a4": ("nvfp4", QuantRecipe(smooth_alpha=0.5, lowrank_rank=48))}


class QuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, fmt: str, recipe: QuantRecipe, act_amax: torch.Tensor):
        super().__init__()
        self.qweight = quantize_weight(linear.weight.detach(), fmt, recipe, act_amax=act_amax)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantized_linear(x, self.qweight, self.bias)


def block_linears(net) -> dict[str, nn.Linear]:
    return {f"blocks.{i}.{n}": getattr(b, n) for i, b in enumerate(net.blocks) for n in ("qkv", "proj", "fc1", "fc2")}


def block_weight_bytes(net) -> dict:
    """Bytes of the block linears' weights as stored (4/8-bit codes, scales, smoothing, low-rank branch; fp32
    when not quantized) against the same weights in bf16; biases left out of both."""
    stored = bf16 = 0
    for layer in block_linears(net).values():
        stored += layer.qweight.nbytes() if isinstance(layer, QuantLinear) else layer.weight.numel() * 4
        bf16 += layer.in_features * layer.out_features * 2
    return {"bytes": stored, "bf16_bytes": bf16, "vs_bf16": round(stored / bf16, 3)}


@torch.no_grad()
def calibrate(net, batches) -> dict[str, torch.Tensor]:
    """Per-input-channel |x| max of every block linear over calibration batches (forward_seq inputs)."""
    amax: dict[str, torch.Tensor] = {}
    hooks = []
    for name, lin in block_linears(net).items():
        def hook(mod, inp, out, name=name):
            a = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0)
            amax[name] = a if name not in amax else torch.maximum(amax[name], a)
        hooks.append(lin.register_forward_hook(hook))
    try:
        for frames, actions, themes, window in batches:
            net.forward_seq(frames, actions, themes, window)
    finally:
        for h in hooks:
            h.remove()
    return amax


def quantize_model(net, weights: str, amax: dict[str, torch.Tensor], recipes: dict = RECIPES) -> None:
    """In place: replace block linears by QuantLinear for weights in {"w8a8", "w4a4"} (recipes: weights ->
    (format, QuantRecipe); each model family keeps its own, e.g. the DOOM model's rank-8 branch)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if weights == "fp32":
        return
    fmt, recipe = recipes[weights]
    for i, blk in enumerate(net.blocks):
        for n in ("qkv", "proj", "fc1", "fc2"):
            lin = getattr(blk, n)
            setattr(blk, n, QuantLinear(lin, fmt, recipe, amax[f"blocks.{i}.{n}"]))
