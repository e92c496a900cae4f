"""Input validation shared by every kernel entry point: one clear ValueError naming the argument.

NaN/Inf policy: quantizers reject non-finite input (a NaN would poison a whole 16-element block's scale),
except while a CUDA graph is being captured: a value check needs the host, which capture forbids.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float(name: str, x, *, min_dim: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")


def check_block_multiple(name: str, x: torch.Tensor, block: int) -> None:
    if x.shape[-1] % block:
        raise ValueError(f"{name}.shape[-1] = {x.shape[-1]} must be a multiple of {block}")


def capturing() -> bool:
    """True while the current CUDA stream records a graph: value checks are skipped then (the eager warm-up
    steps ran the same code with checks on; a replay re-runs the recorded kernels, never these checks)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_finite(name: str, x: torch.Tensor) -> None:
    if capturing():
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); quantization needs finite input")
