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


@pytest.fixture(autouse=True)
def time_sharing():
    """Every test starts under the normal scheduling policy. SVT-AV1 (libsvtav1, the AV1 encoder) switches the
    thread that opens it to SCHED_FIFO 99 when run as root, and every process spawned afterwards inherits it:
    busy real-time processes then starve each other on two cores (a CI run hung on it)."""
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    yield


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
