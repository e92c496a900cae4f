"""CUDA graphs for the steady step: absent on CPU, switchable, and (on a CUDA machine) frame-for-frame equal
to eager stepping through warm-up, capture, replay, a session joining and a prompt switch."""

import numpy as np
import pytest
import torch

from worldlab.model import cuda_graphs, load_model, start_session

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device: graphs are captured on CUDA only (absent on CPU)")


def test_on_cpu_the_graph_path_is_absent():
    m = load_model(device="cpu")
    assert m.graphs is None and m.describe()["cuda_graphs"] == "n/a (cpu)"
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        cuda_graphs.StepGraphs(m._positions, "cpu")


def test_the_flag_turns_capture_off_process_wide(monkeypatch):
    from worldlab.cli import build_parser
    from worldlab.commands import build_model

    monkeypatch.delenv(cuda_graphs.ENV_FLAG, raising=False)
    assert cuda_graphs.enabled_by_default()
    args = build_parser().parse_args(["bench", "--model", "tiny", "--device", "cpu", "--cuda-graphs", "off"])
    build_model(args)
    assert not cuda_graphs.enabled_by_default() and load_model().cuda_graphs is False  # variants too
    monkeypatch.setenv(cuda_graphs.ENV_FLAG, "1")
    assert load_model().cuda_graphs is True


@needs_cuda
@pytest.mark.parametrize("weights, kv", [("fp32", "none"), ("w4a4", "nvfp4"), ("w8a8", "fp8")])
def test_replayed_steps_equal_eager_steps(weights, kv, monkeypatch):
    monkeypatch.delenv(cuda_graphs.ENV_FLAG, raising=False)
    graphed = load_model(weights=weights, kv=kv, window="long", device="cuda")
    eager = load_model(weights=weights, kv=kv, window="long", device="cuda")
    eager.cuda_graphs = False
    g = [start_session(graphed, p, seed=i) for i, p in enumerate(["forest", "snow"])]
    e = [start_session(eager, p, seed=i) for i, p in enumerate(["forest", "snow"])]
    keys = [["right"], ["up", "left"], [], ["down"]]
    for t in range(40):
        if t == 15:  # a session joins: a new set, eager for its warm-up, then captured
            g.append(start_session(graphed, "night", seed=7))
            e.append(start_session(eager, "night", seed=7))
        if t == 25:  # a prompt switch rewrites the caches in place: the captured graph stays valid
            graphed.recache(g[0], "a snowy forest")
            eager.recache(e[0], "a snowy forest")
        acts = [keys[(t + i) % 4] for i in range(len(g))]
        assert np.array_equal(graphed.step(g, acts), eager.step(e, acts)), f"tick {t}"
    stats = graphed.graphs
    assert stats.failed is None, stats.failed
    assert stats.captures == 2 and stats.replays >= 40 - 2 * (cuda_graphs.WARMUP_STEPS + 1)
