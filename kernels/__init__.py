"""Quantization kernels for worldlab: NVFP4 / FP8 formats, W4A4 and W8A8 linears, a compressed KV cache.

Each Triton kernel has a pure-torch reference beside it; importing this package never needs a GPU or triton.
"""

from worldlab.kernels.dispatch import backend, has_triton

__all__ = ["backend", "has_triton"]
