"""The shipped DOOM world model does what docs/model.md says it does, on held-out seeds: it follows the turn
keys from a true context (← and → swing the view apart the right way), beats copying the last frame one step
ahead, and stays as sharp as the truth for the first steps. (Its known misses are in the docs, not here.)"""

import numpy as np
import pytest
import torch

pytest.importorskip("vizdoom", reason="the DOOM world needs the vizdoom wheel (a declared dependency)")

from worldlab import doom, fidelity  # noqa: E402
from worldlab.model.doom.checkpoint import SHIPPED  # noqa: E402
from worldlab.model.doom.world_model import load_doom  # noqa: E402

pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason=f"no shipped DOOM checkpoint at {SHIPPED}")
SEEDS = (100_001, 100_002, 100_005)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_doom()


def _session(model, frames, actions):
    state = model.init_state("normal")
    model.prefill(state, frames[:8], actions[:7])
    return state


def test_left_and_right_swing_the_view_apart_the_right_way(model):
    for seed in SEEDS:
        frames, actions, _ = doom.explore("my_way_home", seed, 10)
        swing = {}
        for key in ("left", "right"):
            state = _session(model, frames, actions)
            seq = [frames[7]] + [model.step([state], [(key,)])[0] for _ in range(8)]
            swing[key] = sum(fidelity.horizontal_shift(a, b) for a, b in zip(seq, seq[1:]))
        # the game swings ~43 px apart over 8 steps; the docs report 1.13x that on 10 seeds
        assert swing["left"] > 10 and swing["right"] < -10, swing


def test_one_step_ahead_it_beats_copying_the_last_frame_and_stays_sharp(model):
    """eval's own teacher-forced protocol (every 4th of the first 32 steps) on 4 of its 10 seeds."""
    from worldlab.doom_eval import CONTEXT_FRAMES, TF_POSITIONS, Episode, teacher_forced

    runs = []
    for seed in (100_000, 100_001, 100_002, 100_003):
        ep = Episode("my_way_home", seed, "normal", CONTEXT_FRAMES + max(TF_POSITIONS))
        try:
            runs.append(teacher_forced(model, ep))
        finally:
            ep.close()
    stack = lambda k: np.concatenate([r[k] for r in runs])  # noqa: E731
    truth, pred, copy = stack("truth"), stack("model"), stack("copy_last")
    psnr = lambda p: fidelity.pooled_psnr([fidelity.mse(a, b) for a, b in zip(p, truth)])  # noqa: E731
    print(f"teacher-forced: model {psnr(pred):.2f} dB, copy-last {psnr(copy):.2f} dB")
    assert psnr(pred) > psnr(copy) + 1.0  # 10 seeds: 25.04 vs 22.16 (docs/model.md)
    assert fidelity.is_sharp(pred, truth)
