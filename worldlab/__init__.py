"""worldlab: a workbench for real-time, interactive video world models.

Subpackages: env (ground truth), model, engine, transport, server, kernels (Triton + references).
"""

__version__ = "0.1.0"
