"""Triton W4A4 (NVFP4) and W8A8 (FP8) matmuls reading packed operands, fp32 accumulation.

Decoded operands are value(code) * E4M3 scale: at most 6 significant bits, so bf16 holds them exactly
and tensor cores give the same products as the fp32 reference. On Blackwell, tl.dot_scaled decodes natively.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from worldlab.kernels.dispatch import is_blackwell
from worldlab.kernels.fp8 import triton_kernels as fp8_tk
from worldlab.kernels.nvfp4 import reference as nvfp4_ref
from worldlab.kernels.nvfp4 import triton_kernels as nvfp4_tk
from worldlab.kernels.nvfp4.format import e2m1_lut, e4m3_lut


@triton.jit
def _decode_nvfp4_tile(packed_ptr, scales_ptr, lut_ptr, slut_ptr, rows, k0, R, K,
                       BR: tl.constexpr, BK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """(BR, BK/2) even-element and odd-element tiles of decoded value * block scale (bf16, exact)."""
    HALF: tl.constexpr = BK // 2
    NB: tl.constexpr = BK // 16
    pk = k0 // 2 + tl.arange(0, HALF)
    m = (rows[:, None] < R) & (pk[None, :] < K // 2)
    p = tl.load(packed_ptr + rows[:, None].to(tl.int64) * (K // 2) + pk[None, :], mask=m, other=0).to(tl.int32)
    sk = k0 // 16 + tl.arange(0, NB)
    sm = (rows[:, None] < R) & (sk[None, :] < K // 16)
    sb = tl.load(scales_ptr + rows[:, None].to(tl.int64) * (K // 16) + sk[None, :], mask=sm, other=0)
    s = tl.load(slut_ptr + sb.to(tl.int32))
    s = tl.reshape(tl.broadcast_to(s[:, :, None], (BR, NB, 8)), (BR, HALF))
    lo = (tl.load(lut_ptr + (p & 0xF)) * s).to(DOT_DTYPE)
    hi = (tl.load(lut_ptr + (p >> 4)) * s).to(DOT_DTYPE)
    return lo, hi


@triton.jit
def _w4a4_kernel(a_packed, a_scales, w_packed, w_scales, lut_ptr, slut_ptr, alpha_ptr, out_ptr, M, N, K,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_SCALED: tl.constexpr,
                 DOT_DTYPE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        if DOT_SCALED:
            pk = k0 // 2 + tl.arange(0, BK // 2)
            sk = k0 // 16 + tl.arange(0, BK // 16)
            a = tl.load(a_packed + rm[:, None] * (K // 2) + pk[None, :], mask=rm[:, None] < M, other=0)
            w = tl.load(w_packed + rn[:, None] * (K // 2) + pk[None, :], mask=rn[:, None] < N, other=0)
            sa = tl.load(a_scales + rm[:, None] * (K // 16) + sk[None, :], mask=rm[:, None] < M, other=0)
            sw = tl.load(w_scales + rn[:, None] * (K // 16) + sk[None, :], mask=rn[:, None] < N, other=0)
            acc = tl.dot_scaled(a, sa.to(tl.float8e4nv, bitcast=True), "e2m1",
                                tl.trans(w), sw.to(tl.float8e4nv, bitcast=True), "e2m1", acc)
        else:
            a_lo, a_hi = _decode_nvfp4_tile(a_packed, a_scales, lut_ptr, slut_ptr, rm, k0, M, K, BM, BK, DOT_DTYPE)
            w_lo, w_hi = _decode_nvfp4_tile(w_packed, w_scales, lut_ptr, slut_ptr, rn, k0, N, K, BN, BK, DOT_DTYPE)
            # The dot product over K is order-free, so even and odd halves are summed separately.
            acc += tl.dot(a_lo, tl.trans(w_lo)) + tl.dot(a_hi, tl.trans(w_hi))
    acc = acc * tl.load(alpha_ptr)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(out_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc, mask=mask)


@triton.jit
def _w8a8_kernel(a_bits, a_scale, w_bits, w_scale, lut_ptr, out_ptr, M, N, K,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        am = (rm[:, None] < M) & (rk[None, :] < K)
        wm = (rn[:, None] < N) & (rk[None, :] < K)
        a = tl.load(a_bits + rm[:, None].to(tl.int64) * K + rk[None, :], mask=am, other=0).to(tl.int32)
        w = tl.load(w_bits + rn[:, None].to(tl.int64) * K + rk[None, :], mask=wm, other=0).to(tl.int32)
        av = tl.load(lut_ptr + a).to(DOT_DTYPE)  # E4M3 values are exact in bf16
        wv = tl.load(lut_ptr + w).to(DOT_DTYPE)
        acc += tl.dot(av, tl.trans(wv))
    sa = tl.load(a_scale + rm, mask=rm < M, other=0.0)
    sw = tl.load(w_scale + rn, mask=rn < N, other=0.0)
    acc = acc * sa[:, None] * sw[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(out_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc, mask=mask)


def _dot_dtype(device: torch.device):
    # The interpreter emulates bf16 dots incorrectly; fp32 gives the same exact products there.
    return tl.bfloat16 if device.type == "cuda" else tl.float32


# Tiles: 16x32x64 keeps the interpreter fast on the test shapes; on GPU 64x64x64 is the smallest tile
# that fills a tensor-core MMA for the model's d=256 layers (bench.py reports both).
def _tiles(device: torch.device) -> tuple[int, int, int]:
    return (64, 64, 64) if device.type == "cuda" else (16, 32, 64)


def w4a4_matmul(x: torch.Tensor, qw) -> torch.Tensor:
    M, K = x.shape
    N = qw.out_features
    pts_a = nvfp4_ref.per_tensor_scale(x)
    a_packed, a_scales = nvfp4_tk.quantize(x, pts_a)
    w = qw.qweight
    alpha = (pts_a * w.per_tensor_scale.to(pts_a.device)).reshape(1).to(torch.float32)
    out = torch.empty((M, N), dtype=torch.float32, device=x.device)
    BM, BN, BK = _tiles(x.device)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _w4a4_kernel[grid](a_packed, a_scales, w.packed, w.scales, e2m1_lut(x.device), e4m3_lut(x.device), alpha,
                       out, M, N, K, BM=BM, BN=BN, BK=BK, DOT_SCALED=is_blackwell(x.device),
                       DOT_DTYPE=_dot_dtype(x.device))
    return out


def w8a8_matmul(x: torch.Tensor, qw) -> torch.Tensor:
    M, K = x.shape
    N = qw.out_features
    a_bits, a_scale = fp8_tk.quantize(x)
    w = qw.qweight
    out = torch.empty((M, N), dtype=torch.float32, device=x.device)
    BM, BN, BK = _tiles(x.device)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _w8a8_kernel[grid](a_bits, a_scale.reshape(-1), w.data.view(torch.uint8), w.scale.reshape(-1),
                       e4m3_lut(x.device), out, M, N, K, BM=BM, BN=BN, BK=BK, DOT_DTYPE=_dot_dtype(x.device))
    return out
