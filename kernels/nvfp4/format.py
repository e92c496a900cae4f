"""NVFP4 / FP8-E4M3 format constants and bit-level helpers, dependency-free apart from torch.

The contract (shared/DESIGN.md): E2M1 codes 0..7 = 0, .5, 1, 1.5, 2, 3, 4, 6 with bit 3 the sign; two
codes per byte, even element in the LOW nibble; 16-element blocks share one E4M3 scale byte.
"""

from __future__ import annotations

import functools

import torch

BLOCK = 16  # elements per shared block scale
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_MIN_NORMAL = 2.0**-6  # smallest block scale; also what an all-zero block gets (byte 0x08)
PER_TENSOR_DIVISOR = E2M1_MAX * E4M3_MAX  # 2688: pts = amax / 2688
BYTES_PER_ELEMENT = 0.5 + 1.0 / BLOCK  # 0.5625 (packed codes + one scale byte per 16)

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Round-half-to-even on the E2M1 grid as thresholds on |x|: a value exactly on a midpoint goes to the
# neighbour whose code is even, hence ">" for midpoints below an even code and ">=" below an odd one.
E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
E2M1_MIDPOINT_INCLUSIVE = (False, True, False, True, False, True, False)


def e2m1_lut(device=None) -> torch.Tensor:
    """fp32 value of each 4-bit code 0..15 (bit 3 = sign); one shared read-only table per device."""
    return _e2m1_lut(str(torch.device(device or "cpu")))


def e4m3_lut(device=None) -> torch.Tensor:
    """fp32 value of each E4M3 (fn variant) byte 0..255; 0x7f/0xff (NaN) decode to NaN. Shared, read-only."""
    return _e4m3_lut(str(torch.device(device or "cpu")))


# Cached so a kernel called inside a CUDA-graph capture never copies a table from the host (capture forbids it).
@functools.lru_cache(maxsize=None)
def _e2m1_lut(device: str) -> torch.Tensor:
    mags = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)
    return torch.cat([mags, -mags])


@functools.lru_cache(maxsize=None)
def _e4m3_lut(device: str) -> torch.Tensor:
    b = torch.arange(256, dtype=torch.int32, device=device)
    sign = torch.where(b >= 128, -1.0, 1.0)
    e = (b >> 3) & 0xF
    m = (b & 7).to(torch.float32)
    normal = torch.ldexp(1.0 + m / 8.0, (e - 7).to(torch.float32))
    sub = m / 8.0 * 2.0**-6
    val = sign * torch.where(e > 0, normal, sub)
    return torch.where((b & 0x7F) == 0x7F, torch.full_like(val, float("nan")), val).to(torch.float32)


def e2m1_encode(v: torch.Tensor) -> torch.Tensor:
    """Round fp32 values already clamped to [-6, 6] to E2M1 codes (uint8 0..15), ties to even.

    The sign bit follows signbit(v), so -0.0 and tiny negatives that round to zero keep code 8.
    """
    a = v.abs()
    code = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for mid, inclusive in zip(E2M1_MIDPOINTS, E2M1_MIDPOINT_INCLUSIVE):
        code += (a >= mid if inclusive else a > mid).to(torch.uint8)
    return code | (torch.signbit(v).to(torch.uint8) << 3)


def e4m3_encode(v: torch.Tensor) -> torch.Tensor:
    """Round fp32 values in the E4M3 range to E4M3 bytes, round-half-to-even (torch's cast does RNE)."""
    return v.to(torch.float8_e4m3fn).view(torch.uint8)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """(..., K) uint8 codes -> (..., K/2) bytes, even element in the low nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """(..., K/2) bytes -> (..., K) uint8 codes."""
    lo = packed & 0xF
    hi = packed >> 4
    return torch.stack([lo, hi], dim=-1).flatten(-2)
