"""Triton flash-style attention that reads the KV cache in its stored format (fp32, FP8 or NVFP4).

Each key tile is decoded in registers (code LUT x block scale x per-frame scale); no dequantized copy of
the cache is ever written. The ALiBi frame-age bias and the sink/window rule match cache.alibi_ages.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from worldlab.kernels.nvfp4.format import e2m1_lut, e4m3_lut

KIND_IDS = {"none": 0, "fp8": 1, "nvfp4": 2}


@triton.jit
def _load_kv_tile(data_ptr, scales_ptr, frame_scale_ptr, lut_ptr, slut_ptr, bh, rn, nmask, slot, N, n_slots,
                  D: tl.constexpr, KIND: tl.constexpr):
    """(BN, D) fp32 tile of keys or values for the flattened (slot, token) indices rn."""
    rd = tl.arange(0, D)
    if KIND == 0:
        x = tl.load(data_ptr + (bh * N + rn[:, None]).to(tl.int64) * D + rd[None, :], mask=nmask[:, None], other=0.0)
        return x.to(tl.float32)
    fs = tl.load(frame_scale_ptr + bh * n_slots + slot, mask=nmask, other=0.0)  # (BN,) per-frame scale
    if KIND == 1:
        b = tl.load(data_ptr + (bh * N + rn[:, None]).to(tl.int64) * D + rd[None, :], mask=nmask[:, None], other=0)
        return tl.load(slut_ptr + b.to(tl.int32)) * fs[:, None]  # E4M3 table
    HALF: tl.constexpr = D // 2
    NB: tl.constexpr = D // 16
    rp = tl.arange(0, HALF)
    p = tl.load(data_ptr + (bh * N + rn[:, None]).to(tl.int64) * HALF + rp[None, :], mask=nmask[:, None], other=0)
    p = p.to(tl.int32)
    rs = tl.arange(0, NB)
    sb = tl.load(scales_ptr + (bh * N + rn[:, None]).to(tl.int64) * NB + rs[None, :], mask=nmask[:, None], other=0)
    s = tl.load(slut_ptr + sb.to(tl.int32)) * fs[:, None]  # (BN, NB)
    s = tl.reshape(tl.broadcast_to(s[:, :, None], (s.shape[0], NB, 8)), (s.shape[0], HALF))
    lo = tl.load(lut_ptr + (p & 0xF)) * s
    hi = tl.load(lut_ptr + (p >> 4)) * s
    return tl.reshape(tl.join(lo, hi), (lo.shape[0], D))  # even element first: undo the nibble packing


@triton.jit
def _attend_kernel(q_ptr, out_ptr, k_data, k_scales, k_fs, v_data, v_scales, v_fs, fid_ptr, slope_ptr,
                   lut_ptr, slut_ptr, H, Tq, T, n_slots, qf_ptr, sink, window, sm_scale,
                   D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, KIND: tl.constexpr,
                   HAS_SLOPES: tl.constexpr):
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    N = n_slots * T
    rm = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, D)
    qmask = rm[:, None] < Tq
    q = tl.load(q_ptr + (bh * Tq + rm[:, None]).to(tl.int64) * D + rd[None, :], mask=qmask, other=0.0)
    slope = 0.0
    q_frame = tl.load(qf_ptr)  # from memory, not an argument: a replayed CUDA graph reads this frame's id
    if HAS_SLOPES:
        slope = tl.load(slope_ptr + bh % H)
    m_i = tl.full((BM,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, D), dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        slot = rn // T
        nmask = rn < N
        fid = tl.load(fid_ptr + slot, mask=nmask, other=-1)
        valid = nmask & (fid >= 0)
        k = _load_kv_tile(k_data, k_scales, k_fs, lut_ptr, slut_ptr, bh, rn, valid, slot, N, n_slots, D, KIND)
        s = tl.dot(q, tl.trans(k)) * sm_scale  # (BM, BN)
        if HAS_SLOPES:
            age = q_frame - fid
            age = tl.where(fid < sink, tl.minimum(age, sink + window - 1 - fid), age)
            s = s - slope * age.to(tl.float32)[None, :]
        s = tl.where(valid[None, :], s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.where(valid[None, :], tl.exp(s - m_new[:, None]), 0.0)
        alpha = tl.exp(m_i - m_new)
        v = _load_kv_tile(v_data, v_scales, v_fs, lut_ptr, slut_ptr, bh, rn, valid, slot, N, n_slots, D, KIND)
        acc = acc * alpha[:, None] + tl.dot(p, v)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + (bh * Tq + rm[:, None]).to(tl.int64) * D + rd[None, :], out, mask=qmask)


def attend(cache, q: torch.Tensor, q_frame, slopes) -> torch.Tensor:
    """q_frame: an int, or a (1,) int64 tensor on q's device (the graph-safe step's)."""
    B, H, Tq, D = q.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    kind = KIND_IDS[cache.kind]
    k, v = cache.store["k"], cache.store["v"]
    dummy = torch.zeros(1, dtype=torch.float32, device=q.device)
    k_args = (k[0], k[1] if kind == 2 else dummy, k[-1] if kind else dummy)
    v_args = (v[0], v[1] if kind == 2 else dummy, v[-1] if kind else dummy)
    slope_t = slopes.to(q.device, torch.float32).contiguous() if slopes is not None else dummy
    qf = q_frame.reshape(1).to(torch.int64) if isinstance(q_frame, torch.Tensor) else \
        torch.full((1,), int(q_frame), dtype=torch.int64, device=q.device)
    BM = 16
    # Key tiles of 32 tokens: a multiple of 16 for tl.dot, small enough that the interpreter stays quick.
    BN = 32 if not q.is_cuda else 64
    grid = (B * H, triton.cdiv(Tq, BM))
    _attend_kernel[grid](q, out, *k_args, *v_args, cache.frame_id, slope_t, e2m1_lut(q.device), e4m3_lut(q.device),
                         H, Tq, cache.T, cache.n_slots, qf, cache.sink, cache.window, 1.0 / math.sqrt(D),
                         D=D, BM=BM, BN=BN, KIND=kind, HAS_SLOPES=slopes is not None)
    return out
