"""Test-wide setup: run Triton kernels through the interpreter when there is no GPU, and keep servers'
keys and records out of the real home (XDG_CONFIG_HOME -> a temporary directory, inherited by subprocesses).

TRITON_INTERPRET must be set before triton.jit decorates anything, hence here at collection time.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def private_config_dir(tmp_path_factory):
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    yield
    if old is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = old


def _real_time_threads() -> dict[int, tuple[int, int]]:
    """{thread id: (policy, priority)} of this process's threads that run SCHED_FIFO or SCHED_RR."""
    found = {}
    try:
        for name in os.listdir("/proc/self/task"):
            try:
                policy = os.sched_getscheduler(int(name))
                if policy in (os.SCHED_FIFO, os.SCHED_RR):
                    found[int(name)] = policy, os.sched_getparam(int(name)).sched_priority
            except OSError:  # the thread ended meanwhile
                pass
    except (OSError, AttributeError):  # not Linux
        pass
    return found


@pytest.fixture(autouse=True)
def time_sharing():
    """A guard that the product's fix holds: no test leaves a thread of this process real-time. SVT-AV1
    (libsvtav1, the AV1 encoder) switches the thread that opens it, and the threads it starts, to SCHED_FIFO 99
    when run as root; worldlab.transport.encoder.open_time_shared gives them their policy back. Busy real-time
    threads, and the processes they spawn (which inherit it), starve each other on two cores (a CI run hung on
    it), so a thread a test turns real-time anyway is put back to SCHED_OTHER and the test errors. The test
    process itself starts every test time-shared (a run under chrt included)."""
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    before = _real_time_threads()
    yield
    left = {tid: p for tid, p in _real_time_threads().items() if before.get(tid) != p}
    for tid in left:
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            pass
    if left:
        pytest.fail(f"the test left threads real-time, {{thread id: (policy, priority)}}: {left} (an AV1 encoder "
                    "opened without worldlab.transport.encoder.open_time_shared?)", pytrace=False)


@pytest.fixture(scope="session")
def micro_ckpt(tmp_path_factory):
    """A micro model trained once per test session (seconds): the real model path, end to end."""
    from worldlab.config import preset
    from worldlab.threads import for_training
    from worldlab.train import train

    for_training()  # two threads beside a busy process stall every op (issue 26): the free cores only
    path = tmp_path_factory.mktemp("ckpt") / "micro.safetensors"
    summary = train(preset("micro"), path, progress=False, log_every=1)
    return path, summary
