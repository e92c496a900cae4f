"""FP8 E4M3 per-row quantization (the 8-bit toggle): scale = row amax / 448, round half to even.

Dispatches to the Triton kernel or the pure-torch reference (WORLDLAB_KERNELS); both are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldlab.kernels.dispatch import implementation
from worldlab.kernels.errors import check_finite, check_float
from worldlab.kernels.fp8 import reference


@dataclass
class FP8Tensor:
    """E4M3 data (..., K) as float8_e4m3fn and one fp32 scale per row (..., 1)."""

    data: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def nbytes(self) -> int:
        return self.data.numel() + 4 * self.scale.numel()

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)


def quantize(x: torch.Tensor) -> FP8Tensor:
    """Per-row (last dim) E4M3 quantization of finite float input."""
    check_float("x", x)
    check_finite("x", x)
    bits, scale = implementation("fp8", x).quantize(x)
    return FP8Tensor(bits.view(torch.float8_e4m3fn), scale)


def dequantize(t: FP8Tensor, dtype=torch.float32) -> torch.Tensor:
    if not isinstance(t, FP8Tensor):
        raise ValueError(f"t must be an FP8Tensor, got {type(t).__name__}")
    if t.data.dtype != torch.float8_e4m3fn:
        raise ValueError(f"t.data must be float8_e4m3fn, got {t.data.dtype}")
    return reference.dequantize(t.data.view(torch.uint8), t.scale, dtype)


__all__ = ["FP8Tensor", "quantize", "dequantize"]
