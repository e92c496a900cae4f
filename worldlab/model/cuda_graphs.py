"""CUDA graphs for the transformer's steady step: the per-frame kernels of a set of sessions are recorded once
and replayed every tick (the seed: cut kernel-launch overhead for a steady cadence). CUDA only; on CPU absent.

Graphs are keyed by the exact tuple of sessions stepped together, not by a batch-size bucket: attention runs
against each session's own cache, so a graph is bound to those caches' memory (a padded bucket would need
dummy caches). Caches are written in place by prefill, recache and reset, so a prompt switch needs no
re-capture; a new set of sessions (one joins or leaves) is captured after it has been stepped WARMUP_STEPS
times in a row, and a new toggle setting is a new model with graphs of its own.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

log = logging.getLogger("worldlab.model")

ENV_FLAG = "WORLDLAB_CUDA_GRAPHS"  # 0/off turns capture off process-wide (`--cuda-graphs off` per command)
WARMUP_STEPS = 3  # eager steps of one session set before it is captured (lazy init, allocator, autotune)
MAX_GRAPHS = 4  # session sets kept; the least recently used is dropped (and its sessions released)


def enabled_by_default() -> bool:
    return os.environ.get(ENV_FLAG, "1").strip().lower() not in ("0", "off", "false", "no")


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    states: tuple  # strong references: the captured kernels write these sessions' cache memory
    inputs: dict  # static input buffers, refilled before each replay
    out: torch.Tensor  # static output buffer, cloned after each replay


class StepGraphs:
    """Run `step(states, inputs, act, themes, ids, slots) -> tensor` eagerly or from a captured graph.

    `ids`/`slots` arrive as Python lists (frame id and cache slot per session) and are copied into device
    buffers, so a replay reads this tick's values; every other input is a device tensor of fixed shape."""

    def __init__(self, step: Callable, device: torch.device, warmup: int = WARMUP_STEPS, max_graphs: int = MAX_GRAPHS):
        if torch.device(device).type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.step, self.device = step, torch.device(device)
        self.warmup, self.max_graphs = warmup, max_graphs
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.streak: tuple[tuple, int] = ((), 0)  # the last eager session set and how often in a row
        self.failed: str | None = None  # the capture error that turned graphs off for this model
        self.pool = None
        self.captures = self.replays = 0

    def run(self, states: Sequence, inputs: torch.Tensor, act: torch.Tensor, themes: torch.Tensor,
            ids: list[int], slots: list[int]) -> torch.Tensor:
        key = tuple(id(s) for s in states)
        entry = self.graphs.get(key)
        if entry is None and self.failed is None and self._warm(key):
            entry = self._capture(key, states, inputs, act, themes, ids, slots)
        if entry is None:
            return self.step(states, inputs, act, themes, self._index(ids), self._index(slots))
        self.graphs.move_to_end(key)
        buf = entry.inputs
        for name, value in (("inputs", inputs), ("act", act), ("themes", themes)):
            buf[name].copy_(value)
        buf["ids"].copy_(torch.tensor(ids, dtype=torch.int64))
        buf["slots"].copy_(torch.tensor(slots, dtype=torch.int64))
        entry.graph.replay()
        self.replays += 1
        return entry.out.clone()

    def describe(self) -> str:
        if self.failed:
            return f"off (capture failed: {self.failed})"
        return f"on ({len(self.graphs)} session sets captured, {self.replays} replays)"

    def _index(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def _warm(self, key: tuple) -> bool:
        last, n = self.streak
        n = n + 1 if key == last else 1
        self.streak = (key, n)
        return n > self.warmup

    def _capture(self, key, states, inputs, act, themes, ids, slots) -> _Graph | None:
        buf = {"inputs": inputs.clone(), "act": act.clone(), "themes": themes.clone(),
               "ids": self._index(ids), "slots": self._index(slots)}
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()  # one memory pool shared by this model's graphs
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.step(states, buf["inputs"], buf["act"], buf["themes"], buf["ids"], buf["slots"])
        except Exception as exc:  # any op that needs the host: stay eager, say why once
            self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            log.warning("CUDA graph capture failed, stepping eagerly: %s", self.failed)
            return None
        entry = _Graph(graph, tuple(states), buf, out)
        self.graphs[key] = entry
        self.captures += 1
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return entry
