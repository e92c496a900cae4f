"""Pure-torch W4A4 / W8A8 matmuls: decode both operands exactly, multiply in fp32.

The quantized values are identical to the Triton path's, so the two differ only by summation order.
"""

from __future__ import annotations

import torch

from worldlab.kernels.fp8 import reference as fp8_ref
from worldlab.kernels.nvfp4 import reference as nvfp4_ref


def w4a4_matmul(x: torch.Tensor, qw) -> torch.Tensor:
    """x (M, K) fp32 -> (M, N): x quantized to NVFP4 with its own per-tensor scale."""
    pts = nvfp4_ref.per_tensor_scale(x)
    packed, scales = nvfp4_ref.quantize(x, pts)
    xq = nvfp4_ref.dequantize(packed, scales, pts)
    return xq @ qw.dequantized().t()


def w8a8_matmul(x: torch.Tensor, qw) -> torch.Tensor:
    bits, scale = fp8_ref.quantize(x)
    xq = fp8_ref.dequantize(bits, scale)
    return xq @ qw.dequantized().t()
