"""Pure-torch NVFP4 quantize/dequantize: the reference every Triton kernel is compared against.

Follows NVIDIA's two-level recipe bit-exactly (fp32 arithmetic, in the order the contract states).
"""

from __future__ import annotations

import torch

from worldlab.kernels.nvfp4.format import (
    BLOCK,
    E2M1_MAX,
    E4M3_MAX,
    E4M3_MIN_NORMAL,
    PER_TENSOR_DIVISOR,
    e2m1_encode,
    e2m1_lut,
    e4m3_encode,
    e4m3_lut,
    pack_codes,
    unpack_codes,
)


def per_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """amax / 2688 as an fp32 scalar; an all-zero tensor gets 1.0 so that 1/pts stays finite, and a tensor so
    small that amax / 2688 leaves fp32's normal range (amax < 3.2e-35, e.g. one subnormal) gets the smallest
    normal fp32: dividing by an underflowed 0 made NaN (found by hypothesis); such values quantize to 0."""
    amax = x.detach().abs().amax().to(torch.float32)
    pts = (amax / PER_TENSOR_DIVISOR).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(amax > 0, pts, torch.ones_like(pts))


def quantize(x: torch.Tensor, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., K) float -> packed (..., K/2) uint8, scales (..., K/16) uint8 E4M3 bits."""
    xf = x.to(torch.float32)
    blocks = xf.reshape(*xf.shape[:-1], xf.shape[-1] // BLOCK, BLOCK)  # (..., K/16, 16)
    pts = pts.to(torch.float32)
    block_amax = blocks.abs().amax(dim=-1)  # (..., K/16)
    s = torch.clamp((block_amax / E2M1_MAX) / pts, E4M3_MIN_NORMAL, E4M3_MAX)
    s_bytes = e4m3_encode(s)
    s_q = s_bytes.view(torch.float8_e4m3fn).to(torch.float32)
    recip = (1.0 / pts) / s_q  # (..., K/16): multiply by this reciprocal, as NVIDIA's kernels do
    v = torch.clamp(blocks * recip.unsqueeze(-1), -E2M1_MAX, E2M1_MAX)
    codes = e2m1_encode(v).reshape(xf.shape)
    return pack_codes(codes), s_bytes


def dequantize(packed: torch.Tensor, scales: torch.Tensor, pts: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Inverse of `quantize`: value(code) * block scale * per-tensor scale, in fp32."""
    codes = unpack_codes(packed)  # (..., K)
    vals = e2m1_lut(packed.device)[codes.long()]
    s = e4m3_lut(packed.device)[scales.long()]  # (..., K/16)
    vals = (vals.reshape(*vals.shape[:-1], -1, BLOCK) * s.unsqueeze(-1)).flatten(-2)
    return (vals * pts.to(torch.float32)).to(dtype)
