"""Quantize a weight once (with an optional smoothing / low-rank recipe) and run the quantized matmul.

y = Q(x / s) @ Q(R)^T + (x / s) @ L2^T @ L1^T + bias, where W * s = L1 L2 + R (SVDQuant) and s is the
SmoothQuant per-input-channel factor; the low-rank branch runs in fp32 on unquantized activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worldlab.kernels import fp8, nvfp4
from worldlab.kernels.dispatch import implementation
from worldlab.kernels.errors import check_block_multiple, check_finite, check_float
from worldlab.kernels.nvfp4.format import BLOCK

FORMATS = ("nvfp4", "fp8")
LOWRANK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # storage of the SVDQuant low-rank branch


@dataclass(frozen=True)
class QuantRecipe:
    """smooth_alpha: SmoothQuant migration strength (None = off); lowrank_rank: SVDQuant branch rank (0 = off);
    lowrank_dtype: how the branch is stored ("fp32", or "bf16": half the bytes, computed in fp32 all the same)."""

    smooth_alpha: float | None = None
    lowrank_rank: int = 0
    lowrank_dtype: str = "fp32"

    def __post_init__(self):
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha must be in [0, 1], got {self.smooth_alpha}")
        if self.lowrank_rank < 0:
            raise ValueError(f"lowrank_rank must be >= 0, got {self.lowrank_rank}")
        if self.lowrank_dtype not in LOWRANK_DTYPES:
            raise ValueError(f"lowrank_dtype must be one of {tuple(LOWRANK_DTYPES)}, got {self.lowrank_dtype!r}")

    @property
    def name(self) -> str:
        parts = ["plain"] if self.smooth_alpha is None and not self.lowrank_rank else []
        if self.smooth_alpha is not None:
            parts.append(f"smooth{self.smooth_alpha:g}")
        if self.lowrank_rank:
            parts.append(f"lowrank{self.lowrank_rank}" + ("" if self.lowrank_dtype == "fp32" else self.lowrank_dtype))
        return "+".join(parts)


@dataclass
class QuantizedWeight:
    """An offline-quantized (N, K) weight plus what its recipe needs at run time."""

    fmt: str
    qweight: object  # NVFP4Tensor (N, K) or FP8Tensor (N, K)
    recipe: QuantRecipe = field(default_factory=QuantRecipe)
    inv_smooth: torch.Tensor | None = None  # (K,) multiply activations by this before quantizing
    lr_down: torch.Tensor | None = None  # (r, K) in the recipe's lowrank_dtype
    lr_up: torch.Tensor | None = None  # (N, r) in the recipe's lowrank_dtype
    _dequantized: torch.Tensor | None = None  # reference-path cache of the (N, K) decoded weight

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    def nbytes(self) -> int:
        n = self.qweight.nbytes()
        for t in (self.inv_smooth, self.lr_down, self.lr_up):
            n += 0 if t is None else t.numel() * t.element_size()
        return n

    def dequantized(self) -> torch.Tensor:
        if self._dequantized is None:
            self._dequantized = self.qweight.dequantize(torch.float32)
        return self._dequantized


def smoothing_factor(act_amax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant s_j = amax_x_j^alpha / amax_w_j^(1-alpha), clamped away from 0 so 1/s stays finite."""
    w_amax = weight.abs().amax(dim=0).clamp_min(1e-5)
    a = act_amax.to(torch.float32).clamp_min(1e-5)
    return (a.pow(alpha) / w_amax.pow(1.0 - alpha)).clamp(1e-4, 1e4)


def quantize_weight(weight: torch.Tensor, fmt: str = "nvfp4", recipe: QuantRecipe | None = None,
                    act_amax: torch.Tensor | None = None) -> QuantizedWeight:
    """Offline: apply the recipe to an (N, K) weight and quantize what remains to `fmt`."""
    recipe = recipe or QuantRecipe()
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    check_float("weight", weight, min_dim=2)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (N, K), got shape {tuple(weight.shape)}")
    if fmt == "nvfp4":
        check_block_multiple("weight", weight, BLOCK)
    check_finite("weight", weight)
    w = weight.detach().to(torch.float32)
    inv_smooth = None
    if recipe.smooth_alpha is not None:
        if act_amax is None:
            raise ValueError("act_amax (per-input-channel |x| max from calibration) is required for smoothing")
        if act_amax.shape != (w.shape[1],):
            raise ValueError(f"act_amax must have shape ({w.shape[1]},), got {tuple(act_amax.shape)}")
        s = smoothing_factor(act_amax.to(w.device), w, recipe.smooth_alpha)
        w = w * s  # (N, K): the activation outliers move into the weight columns
        inv_smooth = 1.0 / s
    lr_down = lr_up = None
    if recipe.lowrank_rank:
        r = min(recipe.lowrank_rank, min(w.shape))
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)
        dtype = LOWRANK_DTYPES[recipe.lowrank_dtype]
        lr_up = (U[:, :r] * S[:r]).to(dtype).contiguous()  # (N, r)
        lr_down = Vh[:r].to(dtype).contiguous()  # (r, K)
        w = w - lr_up.float() @ lr_down.float()  # residual R of the stored branch: what the 4-bit path carries
    q = nvfp4.quantize(w) if fmt == "nvfp4" else fp8.quantize(w)
    return QuantizedWeight(fmt, q, recipe, inv_smooth, lr_down, lr_up)


def _check_x(x: torch.Tensor, qw: QuantizedWeight) -> None:
    check_float("x", x)
    if x.shape[-1] != qw.in_features:
        raise ValueError(f"x.shape[-1] = {x.shape[-1]} does not match the weight's in_features {qw.in_features}")
    check_finite("x", x)


def quantized_linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(..., K) activations -> (..., N) fp32: quantize x on the fly, matmul with fp32 accumulation."""
    if not isinstance(qw, QuantizedWeight):
        raise ValueError(f"qweight must be a QuantizedWeight from quantize_weight, got {type(qw).__name__}")
    _check_x(x, qw)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)
    if qw.inv_smooth is not None:
        x2 = x2 * qw.inv_smooth
    impl = implementation("linear", x2)
    y = impl.w4a4_matmul(x2, qw) if qw.fmt == "nvfp4" else impl.w8a8_matmul(x2, qw)
    if qw.lr_down is not None:
        y = y + (x2 @ qw.lr_down.float().t()) @ qw.lr_up.float().t()  # .float(): no copy when stored fp32
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.reshape(*lead, qw.out_features)


def w4a4_linear(x: torch.Tensor, qweight: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    if getattr(qweight, "fmt", None) != "nvfp4":
        raise ValueError("w4a4_linear needs a weight quantized with fmt='nvfp4'")
    return quantized_linear(x, qweight, bias)


def w8a8_linear(x: torch.Tensor, qweight: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    if getattr(qweight, "fmt", None) != "fp8":
        raise ValueError("w8a8_linear needs a weight quantized with fmt='fp8'")
    return quantized_linear(x, qweight, bias)
