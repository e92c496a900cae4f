"""A plug-in module that fails while it imports (its entry point must be a one-line error, not a crash)."""

raise RuntimeError("this plug-in needs libcuda.so.1, which is not installed")
