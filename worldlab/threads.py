"""How many torch threads a piece of work gets: one rule for serve, the Player, eval, bench, sweeps and training,
so that a busy machine slows the work down in proportion instead of collapsing it (docs/streaming.md, Threads).

Why: a batch-1 model step is a chain of small ops, each an OpenMP parallel region ending in a barrier. With more
threads than free cores, one of them is always descheduled at the barrier and the step waits a scheduler time
slice per op (x99 on this 2-core machine beside two busy processes; benchmarks/load_bench.py). A step gains
nothing from a second thread on a quiet machine either (tiny: 1.78 ms on one, 2.03 on two), so inference runs
on one thread; training, whose bigger matmuls do gain, takes the cores free when it starts. OMP_WAIT_POLICY is
left alone: PASSIVE halves the loaded cost of two threads but doubles their quiet step (docs/streaming.md).
`--threads N` overrides either.
"""

from __future__ import annotations

import os

INFERENCE_THREADS = 1  # a live step, an eval rollout, a bench, a sweep point, the notebook Player


def cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count: containers and taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def free_cores(sample_s: float = 0.25) -> int:
    """Cores not busy with other processes over a short sample: at least 1, at most cores()."""
    import psutil

    me = psutil.Process()
    me.cpu_percent(None)
    busy_all = psutil.cpu_percent(interval=sample_s) / 100 * (psutil.cpu_count() or 1)
    busy_others = max(0.0, busy_all - me.cpu_percent(None) / 100)
    return max(1, min(cores(), round(cores() - busy_others)))


def check(requested) -> int:
    """A --threads value: an int >= 1 (a bool, 0 or a negative number is refused in one line)."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(f"threads must be an integer >= 1, got {requested!r}")
    return requested


def for_inference(requested: int | None = None) -> int:
    """Set and return torch's thread count for stepping a model: `requested`, else INFERENCE_THREADS."""
    return _set(INFERENCE_THREADS if requested is None else check(requested))


def for_training(requested: int | None = None) -> int:
    """Set and return torch's thread count for training: `requested`, else the cores free right now."""
    return _set(free_cores() if requested is None else check(requested))


def server_threads(requested: int | None, runners: int = 1) -> tuple[int, str | None]:
    """Threads per model runner for a server, and a warning when runners x threads exceeds the cores (the
    encoder and the event loop need a core too; --threads may still insist)."""
    n = INFERENCE_THREADS if requested is None else check(requested)
    if n * runners > cores():
        return n, (f"--threads {n} x {runners} model runner(s) is more than this machine's {cores()} cores: "
                   f"steps will stall whenever the CPU is busy (docs/streaming.md, Threads)")
    return n, None


def _set(n: int) -> int:
    import torch

    torch.set_num_threads(n)
    return n
