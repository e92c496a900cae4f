"""Provenance attrs stamped on every results file: code version, library versions, checkpoint, machine.

All values are str/int so they survive netCDF; `code_version()` is also the sweep cache's code key.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pathlib
import platform
import subprocess
import sys
from importlib import metadata

REPO = pathlib.Path(__file__).resolve().parents[2]
PROVENANCE_KEYS = ("git_commit", "git_dirty", "worldlab_version", "torch_version", "triton_version",
                   "python_version", "checkpoint_sha256", "machine_cpu", "machine_cores", "machine_gpu",
                   "started_at")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str, int]:
    """(commit, dirty) of the source tree; ("unknown", 0) outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return "unknown", 0
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "worldlab", "kernels", "notebooks")
    return commit, int(bool(status))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def checkpoint_sha256(checkpoint=None) -> str:
    """sha256 of a checkpoint file (None: the shipped tiny one); "none" for False (a model without a
    checkpoint, e.g. the oracle) or a missing file."""
    from worldlab.model.checkpoint import SHIPPED, file_sha256

    if checkpoint is False:
        return "none"
    path = pathlib.Path(checkpoint) if checkpoint else SHIPPED
    return file_sha256(path) if path.is_file() else "none"


def code_version() -> str:
    """The commit, plus a hash of uncommitted changes to the package and notebooks when the tree is dirty."""
    commit, dirty = git_state()
    if not dirty:
        return commit
    diff = _git("diff", "HEAD", "--", "worldlab", "kernels", "notebooks") or ""
    return f"{commit}+{hashlib.sha256(diff.encode()).hexdigest()[:12]}"


def model_checkpoint(model, checkpoint=None):
    """The file `model` was loaded from: `checkpoint`, else its `checkpoint_path`, else its plug-in's file;
    False for a model that loads none (the oracle, a hand-written model), so no file is hashed for it."""
    if checkpoint:
        return checkpoint
    path = getattr(model, "checkpoint_path", None)
    if path:
        return path
    plugin = getattr(model, "plugin", None)
    return (plugin.checkpoint_file() if plugin is not None else None) or False


def provenance(checkpoint=None, started_at: str | None = None, model=None) -> dict:
    """Provenance attrs; with `model`, its checkpoint (model_checkpoint) is the one hashed."""
    if model is not None:
        checkpoint = model_checkpoint(model, checkpoint)
    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "worldlab_version": _version("worldlab"),
        "torch_version": _version("torch"),
        "triton_version": _version("triton"),
        "python_version": sys.version.split()[0],
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
        "machine_cpu": cpu_model(),
        "machine_cores": os.cpu_count() or 0,
        "machine_gpu": gpu_name(),
        "started_at": started_at or now(),
    }


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
