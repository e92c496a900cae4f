"""Shared fixtures for kernel tests: the awkward shapes and the reference/Triton backends."""

import importlib.util

import pytest

# Rows 1, 3, 17, 257 and K = 16, 48, 1040: a single block, a non-power-of-two count of blocks, a K that is
# not a multiple of the kernel's 64-wide tile, and a row count that is not a multiple of the 16-row tile.
AWKWARD_SHAPES = [(1, 16), (3, 48), (17, 1040), (257, 32), (2, 3, 80)]

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
