"""Reference attention over a KVCache: decode the stored K/V to fp32, then one masked softmax.

The Triton kernel must match this within fp32 summation-order error (same decoded values).
"""

from __future__ import annotations

import torch


def attend(cache, q: torch.Tensor, q_frame, slopes) -> torch.Tensor:
    """q_frame: an int, or a (1,) int64 tensor (the graph-safe step's)."""
    B, H, n, T, D = cache.B, cache.H, cache.n_slots, cache.T, cache.D
    k = cache.decoded("k").reshape(B, H, n * T, D)
    v = cache.decoded("v").reshape(B, H, n * T, D)
    bias = cache.slot_bias(q_frame, slopes).repeat_interleave(T, dim=1)  # (H, n*T)
    # SDPA applies the same 1/sqrt(D) scale; the additive mask carries the ALiBi bias and empty slots.
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias[None, :, None, :])
