"""Pure-torch FP8 E4M3 per-row quantize / dequantize, the reference for the Triton kernel.

scale = amax(row) / 448 (1.0 for an all-zero row); q = e4m3_rne(clamp(x * (1 / scale), -448, 448)).
"""

from __future__ import annotations

import torch

from worldlab.kernels.nvfp4.format import E4M3_MAX, e4m3_lut


def row_scale(x: torch.Tensor) -> torch.Tensor:
    amax = x.detach().abs().amax(dim=-1, keepdim=True).to(torch.float32)
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., K) -> E4M3 bytes (..., K) uint8, fp32 scales (..., 1)."""
    scale = row_scale(x)
    v = torch.clamp(x.to(torch.float32) * (1.0 / scale), -E4M3_MAX, E4M3_MAX)
    return v.to(torch.float8_e4m3fn).view(torch.uint8), scale


def dequantize(bits: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (e4m3_lut(bits.device)[bits.long()] * scale).to(dtype)
