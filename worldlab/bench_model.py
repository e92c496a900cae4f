"""Headless model benchmark (`worldlab bench --json`): step latency percentiles, prompt-switch spike,
and micro-batching throughput (one forward for B sessions vs B sequential steps).

Figures are printed, never asserted: a slow machine must not fail a test.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from worldlab import env
from worldlab.engine.metrics import percentiles
from worldlab.model import start_session
from worldlab.model.protocol import describe
from worldlab.model.quantize import block_weight_bytes


def _weight_bytes(model) -> dict | None:
    """The transformer blocks' weight bytes vs bf16 (worldlab.model.quantize), for models built on one."""
    net = getattr(model, "net", None)
    return block_weight_bytes(net) if net is not None and hasattr(net, "blocks") else None


def bench(model, *, steps=300, batches=(1, 4, 8)) -> dict:
    """Time `model` (a WorldModel, e.g. from worldlab.model.registry) on one session and in batches."""
    if steps < 10:
        raise ValueError(f"steps must be >= 10, got {steps}")
    actions = env.random_actions(steps + 50, seed=7)
    s = start_session(model, "a walk in the forest", seed=7)
    for a in actions[:30]:  # warm-up: fill the window so every timed step attends a full cache
        model.step([s], [a])
    ms = []
    for a in actions[30:30 + steps]:
        t0 = time.perf_counter()
        model.step([s], [a])
        ms.append((time.perf_counter() - t0) * 1000)
    switch = []
    for i, prompt in enumerate(["snowy hills", "desert dunes", "night sky", "forest path"] * 3):
        t0 = time.perf_counter()
        model.recache(s, prompt)
        model.step([s], [actions[i]])
        switch.append((time.perf_counter() - t0) * 1000)
    pct = percentiles(ms)
    batch_fps, ratio = {}, {}
    n = max(20, steps // 5)
    for B in batches:
        sessions = [start_session(model, "forest", seed=100 + i) for i in range(B)]
        for a in actions[:20]:
            model.step(sessions, [a] * B)
        t0 = time.perf_counter()
        for a in actions[:n]:
            model.step(sessions, [a] * B)
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        for a in actions[:n]:
            for sess in sessions:
                model.step([sess], [a])
        sequential = time.perf_counter() - t0
        batch_fps[B] = B * n / batched
        ratio[B] = sequential / batched
    return {"model_ms_p50": pct["p50"], "model_ms_p95": pct["p95"], "model_ms_p99": pct["p99"],
            "switch_ms": float(np.median(switch)), "switch_ms_max": float(np.max(switch)),
            "fps": 1000.0 / pct["p50"], "batch_fps": batch_fps, "batch_speedup_vs_sequential": ratio,
            "kv_bytes": model.kv_bytes(s), "weight_bytes": _weight_bytes(model), "model_ms": ms, "threads": torch.get_num_threads(), "steps": steps,
            "config": describe(model)}
