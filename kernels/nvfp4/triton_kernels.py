"""Triton kernels for NVFP4 quantize / dequantize, bit-identical to reference.py.

Imported lazily (only when the Triton backend is selected), so the package loads without triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from worldlab.kernels.nvfp4 import format as fmt
from worldlab.kernels.nvfp4.format import BLOCK, e2m1_lut, e4m3_lut

# The format's constants (format.py is the one definition); Triton reads globals only as constexpr.
E2M1_MAX = tl.constexpr(fmt.E2M1_MAX)
E4M3_MAX = tl.constexpr(fmt.E4M3_MAX)
E4M3_MIN_NORMAL = tl.constexpr(fmt.E4M3_MIN_NORMAL)
MID0, MID1, MID2, MID3, MID4, MID5, MID6 = (tl.constexpr(m) for m in fmt.E2M1_MIDPOINTS)


@triton.jit
def e4m3_rne_bits(s):
    """fp32 s in [2^-6, 448] (always a normal E4M3) -> (E4M3 byte as int32, rounded fp32 value)."""
    bits = s.to(tl.int32, bitcast=True)
    # Round the 23-bit mantissa to 3 bits, half to even: add 0x7FFFF plus the lowest kept bit.
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0x7FF00000
    exp = ((bits >> 23) & 0xFF) - 127 + 7
    byte = (exp << 3) | ((bits >> 20) & 7)
    return byte, bits.to(tl.float32, bitcast=True)


@triton.jit
def e2m1_code(v):
    """fp32 v in [-6, 6] -> E2M1 code (int32 0..15), ties to even, sign from the sign bit."""
    a = tl.abs(v)
    # ">" below an even code, ">=" below an odd one: format.E2M1_MIDPOINT_INCLUSIVE.
    code = (a > MID0).to(tl.int32) + (a >= MID1).to(tl.int32) + (a > MID2).to(tl.int32)
    code += (a >= MID3).to(tl.int32) + (a > MID4).to(tl.int32) + (a >= MID5).to(tl.int32)
    code += (a > MID6).to(tl.int32)
    neg = (v.to(tl.int32, bitcast=True) < 0).to(tl.int32)
    return code | (neg << 3)


@triton.jit
def _quantize_kernel(x_ptr, packed_ptr, scales_ptr, pts_ptr, M, K,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PTS_PER_ROW: tl.constexpr):
    # One program quantizes a (BLOCK_M, BLOCK_K) tile; even and odd elements are loaded separately so
    # that packing is one shift-or with no interleave.
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    HALF: tl.constexpr = BLOCK_K // 2
    NB: tl.constexpr = BLOCK_K // 16
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    pcols = pid_k * HALF + tl.arange(0, HALF)  # packed columns (HALF,)
    mask = (rows[:, None] < M) & (pcols[None, :] < K // 2)
    base = x_ptr + rows[:, None].to(tl.int64) * K + 2 * pcols[None, :]
    xe = tl.load(base, mask=mask, other=0.0).to(tl.float32)  # (BM, HALF)
    xo = tl.load(base + 1, mask=mask, other=0.0).to(tl.float32)
    if PTS_PER_ROW:  # the KV cache: one second-level scale per row
        pts = tl.load(pts_ptr + rows, mask=rows < M, other=1.0)[:, None]
    else:
        pts = tl.load(pts_ptr)
    amax_e = tl.max(tl.reshape(tl.abs(xe), (BLOCK_M, NB, 8)), axis=2)
    amax_o = tl.max(tl.reshape(tl.abs(xo), (BLOCK_M, NB, 8)), axis=2)
    amax = tl.maximum(amax_e, amax_o)  # (BM, NB)
    s = tl.div_rn(tl.div_rn(amax, E2M1_MAX), pts)
    s = tl.minimum(tl.maximum(s, E4M3_MIN_NORMAL), E4M3_MAX)
    sbyte, sq = e4m3_rne_bits(s)
    recip = tl.div_rn(tl.div_rn(1.0, pts), sq)  # (BM, NB)
    recip = tl.reshape(tl.broadcast_to(recip[:, :, None], (BLOCK_M, NB, 8)), (BLOCK_M, HALF))
    ce = e2m1_code(tl.minimum(tl.maximum(xe * recip, -E2M1_MAX), E2M1_MAX))
    co = e2m1_code(tl.minimum(tl.maximum(xo * recip, -E2M1_MAX), E2M1_MAX))
    byte = (ce | (co << 4)).to(tl.uint8)
    tl.store(packed_ptr + rows[:, None].to(tl.int64) * (K // 2) + pcols[None, :], byte, mask=mask)
    scols = pid_k * NB + tl.arange(0, NB)
    smask = (rows[:, None] < M) & (scols[None, :] < K // 16)
    tl.store(scales_ptr + rows[:, None].to(tl.int64) * (K // 16) + scols[None, :], sbyte.to(tl.uint8), mask=smask)


@triton.jit
def _dequantize_kernel(packed_ptr, scales_ptr, pts_ptr, lut_ptr, slut_ptr, out_ptr, M, K,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    HALF: tl.constexpr = BLOCK_K // 2
    NB: tl.constexpr = BLOCK_K // 16
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pcols = pid_k * HALF + tl.arange(0, HALF)
    mask = (rows[:, None] < M) & (pcols[None, :] < K // 2)
    p = tl.load(packed_ptr + rows[:, None].to(tl.int64) * (K // 2) + pcols[None, :], mask=mask, other=0).to(tl.int32)
    scols = pid_k * NB + tl.arange(0, NB)
    smask = (rows[:, None] < M) & (scols[None, :] < K // 16)
    sb = tl.load(scales_ptr + rows[:, None].to(tl.int64) * (K // 16) + scols[None, :], mask=smask, other=0)
    s = tl.load(slut_ptr + sb.to(tl.int32))  # (BM, NB)
    s = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_M, NB, 8)), (BLOCK_M, HALF))
    pts = tl.load(pts_ptr)
    ve = tl.load(lut_ptr + (p & 0xF)) * s * pts
    vo = tl.load(lut_ptr + (p >> 4)) * s * pts
    base = out_ptr + rows[:, None].to(tl.int64) * K + 2 * pcols[None, :]
    tl.store(base, ve.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(base + 1, vo.to(out_ptr.dtype.element_ty), mask=mask)


_TILE_M = 16
# 64 columns = 4 scale blocks per program: small enough for the interpreter, a full warp of bytes on GPU.
_TILE_K = 64


def quantize(x: torch.Tensor, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    K = x.shape[-1]
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    packed = torch.empty((M, K // 2), dtype=torch.uint8, device=x.device)
    scales = torch.empty((M, K // BLOCK), dtype=torch.uint8, device=x.device)
    per_row = pts.numel() != 1  # a scalar, or one per row shaped (..., 1) like the reference takes
    pts_t = (pts.expand(*x.shape[:-1], 1) if per_row else pts).reshape(-1)
    pts_t = pts_t.to(device=x.device, dtype=torch.float32).contiguous()
    grid = (triton.cdiv(M, _TILE_M), triton.cdiv(K, _TILE_K))
    _quantize_kernel[grid](x2, packed, scales, pts_t, M, K, BLOCK_M=_TILE_M, BLOCK_K=_TILE_K, PTS_PER_ROW=per_row)
    lead = x.shape[:-1]
    return packed.reshape(*lead, K // 2), scales.reshape(*lead, K // BLOCK)


def dequantize(packed: torch.Tensor, scales: torch.Tensor, pts: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    K = packed.shape[-1] * 2
    p2 = packed.reshape(-1, K // 2).contiguous()
    s2 = scales.reshape(-1, K // BLOCK).contiguous()
    M = p2.shape[0]
    out = torch.empty((M, K), dtype=dtype, device=packed.device)
    pts_t = pts.reshape(1).to(device=packed.device, dtype=torch.float32)
    lut = e2m1_lut(packed.device)
    slut = e4m3_lut(packed.device)
    grid = (triton.cdiv(M, _TILE_M), triton.cdiv(K, _TILE_K))
    _dequantize_kernel[grid](p2, s2, pts_t, lut, slut, out, M, K, BLOCK_M=_TILE_M, BLOCK_K=_TILE_K)
    return out.reshape(*packed.shape[:-1], K)
