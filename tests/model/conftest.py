"""A micro model trained once per test session (seconds) for the model tests."""

import pytest
import torch


@pytest.fixture(scope="session")
def micro_ckpt(tmp_path_factory):
    from worldlab.config import preset
    from worldlab.train import train

    torch.set_num_threads(2)
    path = tmp_path_factory.mktemp("ckpt") / "micro.safetensors"
    summary = train(preset("micro"), path, progress=False, log_every=1)
    return path, summary
