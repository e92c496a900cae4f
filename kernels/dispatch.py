"""Chooses between the Triton kernels and the pure-torch references at call time.

WORLDLAB_KERNELS=reference|triton|auto (default auto: Triton when the tensor is on CUDA, else reference).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

MODES = ("reference", "triton", "auto")


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend(x: torch.Tensor | None = None) -> str:
    """'triton' or 'reference' for a call on tensor `x`, honouring WORLDLAB_KERNELS."""
    mode = os.environ.get("WORLDLAB_KERNELS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"WORLDLAB_KERNELS must be one of {MODES}, got {mode!r}")
    if mode == "reference":
        return "reference"
    if mode == "triton":
        if not has_triton():
            raise ValueError("WORLDLAB_KERNELS=triton but the triton package is not installed")
        if x is not None and not x.is_cuda and not interpreting():
            raise ValueError("WORLDLAB_KERNELS=triton on a CPU tensor needs TRITON_INTERPRET=1")
        return "triton"
    on_cuda = x.is_cuda if x is not None else torch.cuda.is_available()
    return "triton" if (on_cuda and has_triton()) else "reference"


def implementation(kernel: str, x: torch.Tensor | None = None) -> ModuleType:
    """The module that runs `kernel` (nvfp4 | fp8 | linear | kv_cache) for a call on `x`: its triton_kernels
    (imported only when chosen, so the package loads without triton) or its pure-torch reference."""
    return importlib.import_module(f"worldlab.kernels.{kernel}.{'triton_kernels' if backend(x) == 'triton' else 'reference'}")


def is_blackwell(device: torch.device) -> bool:
    """True on sm_100+ where tl.dot_scaled decodes NVFP4 natively."""
    if device.type != "cuda" or interpreting():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 10
