"""NVFP4 (E2M1 values, E4M3 block scales, fp32 per-tensor scale): the public quantize / dequantize.

Dispatches to the Triton kernel or the pure-torch reference (WORLDLAB_KERNELS); both are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldlab.kernels.dispatch import implementation
from worldlab.kernels.errors import capturing, check_block_multiple, check_finite, check_float
from worldlab.kernels.nvfp4 import reference
from worldlab.kernels.nvfp4.format import BLOCK, BYTES_PER_ELEMENT


@dataclass
class NVFP4Tensor:
    """Packed NVFP4 data: codes (..., K/2) uint8, E4M3 scale bytes (..., K/16), fp32 scalar per-tensor scale."""

    packed: torch.Tensor
    scales: torch.Tensor
    per_tensor_scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.packed.shape[:-1], self.packed.shape[-1] * 2))

    def nbytes(self) -> int:
        return self.packed.numel() + self.scales.numel() + 4

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)


def _check_pts(per_tensor_scale) -> torch.Tensor:
    pts = torch.as_tensor(per_tensor_scale, dtype=torch.float32)
    if pts.numel() != 1:
        raise ValueError(f"per_tensor_scale must be a scalar, got shape {tuple(pts.shape)}")
    if not bool(torch.isfinite(pts).all()) or float(pts) <= 0:
        raise ValueError(f"per_tensor_scale must be finite and > 0, got {float(pts)}")
    return pts.reshape(())


def quantize(x: torch.Tensor, per_tensor_scale=None) -> NVFP4Tensor:
    """Quantize (..., K) floats, K a multiple of 16; per_tensor_scale defaults to amax / 2688."""
    check_float("x", x)
    check_block_multiple("x", x, BLOCK)
    check_finite("x", x)
    pts = reference.per_tensor_scale(x) if per_tensor_scale is None else _check_pts(per_tensor_scale)
    pts = pts.to(x.device)
    packed, scales = implementation("nvfp4", x).quantize(x, pts)
    return NVFP4Tensor(packed, scales, pts)


def quantize_rows(x: torch.Tensor, row_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Like quantize, but each row (..., K) has its own fp32 second-level scale, row_scales of shape
    x.shape[:-1] (or broadcastable to it): the KV cache's per-(batch, head, frame) scales. Returns the
    packed codes and scale bytes; the caller keeps row_scales."""
    check_float("x", x)
    check_block_multiple("x", x, BLOCK)
    check_finite("x", x)
    rows = torch.as_tensor(row_scales, dtype=torch.float32, device=x.device).expand(x.shape[:-1])
    if not capturing() and (not bool(torch.isfinite(rows).all()) or bool((rows <= 0).any())):
        raise ValueError("row_scales must be finite and > 0")
    return implementation("nvfp4", x).quantize(x, rows[..., None])


def dequantize(t: NVFP4Tensor, dtype=torch.float32) -> torch.Tensor:
    """Decode to `dtype`: value(code) * block scale * per-tensor scale."""
    if not isinstance(t, NVFP4Tensor):
        raise ValueError(f"t must be an NVFP4Tensor, got {type(t).__name__}")
    if t.packed.dtype != torch.uint8 or t.scales.dtype != torch.uint8:
        raise ValueError(f"t.packed and t.scales must be uint8, got {t.packed.dtype} and {t.scales.dtype}")
    if t.scales.shape[-1] * BLOCK != t.packed.shape[-1] * 2:
        raise ValueError(f"t.scales.shape {tuple(t.scales.shape)} does not match t.packed.shape {tuple(t.packed.shape)}")
    return implementation("nvfp4", t.packed).dequantize(t.packed, t.scales, t.per_tensor_scale, dtype)


__all__ = ["NVFP4Tensor", "quantize", "quantize_rows", "dequantize", "BLOCK", "BYTES_PER_ELEMENT"]
