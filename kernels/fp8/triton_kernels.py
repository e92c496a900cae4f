"""Triton FP8 E4M3 per-row quantize, bit-identical to reference.py.

Rounds by bit manipulation rather than `.to(tl.float8e4nv)`: the interpreter's cast truncates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from worldlab.kernels.nvfp4.triton_kernels import E4M3_MAX, E4M3_MIN_NORMAL  # format.py's, as constexpr


@triton.jit
def e4m3_rne_byte(v):
    """fp32 v with |v| <= 448 -> E4M3 byte (int32), round half to even, subnormals included."""
    a = tl.abs(v)
    bits = a.to(tl.int32, bitcast=True)
    r = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0x7FF00000
    normal = ((((r >> 23) & 0xFF) - 120) << 3) | ((r >> 20) & 7)
    # Below 2^-6 the grid step is 2^-9: adding 2^23 makes fp32 round a*512 to an integer (RNE);
    # a result of 8 is exactly the smallest normal, whose byte is also 8.
    sub = ((a * 512.0 + 8388608.0) - 8388608.0).to(tl.int32)
    byte = tl.where(a < E4M3_MIN_NORMAL, sub, normal)
    neg = (v.to(tl.int32, bitcast=True) < 0).to(tl.int32)
    return byte | (neg << 7)


@triton.jit
def _quantize_rows_kernel(x_ptr, out_ptr, scale_ptr, K, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    m = tl.max(amax, axis=0)
    scale = tl.where(m > 0, tl.div_rn(m, E4M3_MAX), 1.0)
    recip = tl.div_rn(1.0, scale)
    tl.store(scale_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
        v = tl.minimum(tl.maximum(x * recip, -E4M3_MAX), E4M3_MAX)
        tl.store(out_ptr + row * K + cols, e4m3_rne_byte(v).to(tl.uint8), mask=cols < K)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    K = x.shape[-1]
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    out = torch.empty((M, K), dtype=torch.uint8, device=x.device)
    scale = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    _quantize_rows_kernel[(M,)](x2, out, scale, K, BLOCK_K=min(1024, triton.next_power_of_2(K)))
    return out.reshape(x.shape), scale.reshape(*x.shape[:-1], 1)
