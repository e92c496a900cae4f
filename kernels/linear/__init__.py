"""Quantized linear layers: W4A4 (NVFP4) and W8A8 (FP8 E4M3), with SmoothQuant and SVDQuant recipes.

Weights are quantized once offline (`quantize_weight`); activations are quantized on the fly per call.
"""

from worldlab.kernels.linear.api import (
    QuantRecipe,
    QuantizedWeight,
    quantize_weight,
    quantized_linear,
    w4a4_linear,
    w8a8_linear,
)

__all__ = ["QuantRecipe", "QuantizedWeight", "quantize_weight", "quantized_linear", "w4a4_linear", "w8a8_linear"]
