"""A frame-structured KV cache (attention sink + sliding window ring) stored uncompressed, FP8 or NVFP4.

`attend` reads the packed storage directly (Triton) or decodes it (reference); see cache.py.
"""

from worldlab.kernels.kv_cache.cache import KINDS, KVCache, alibi_ages, make_kv_cache

__all__ = ["KINDS", "KVCache", "alibi_ages", "make_kv_cache"]
