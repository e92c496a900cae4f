"""The shipped tiny checkpoint holds the world: held keys keep the agent a crisp 6x6 block on the
environment's track for 90 steps, and the long window brings a hidden object back where it belongs."""

import numpy as np
import pytest

from worldlab import env
from worldlab.model import CONTEXT_FRAMES, load_model, start_session


@pytest.fixture(scope="module")
def tiny():
    return load_model()  # the shipped checkpoint


@pytest.mark.parametrize("seed, theme", [(3, "desert"), (8, "night")])
def test_held_keys_keep_the_agent_compact_and_on_track_for_90_steps(tiny, seed, theme):
    s = start_session(tiny, f"a walk in the {theme}", seed=seed)
    w = env.World(seed, theme)  # the same world start_session prefilled from
    for a in env.random_actions(CONTEXT_FRAMES - 1, seed):
        w.step(a)
    agent = np.array(env.THEME_LIST[env.THEMES.index(theme)].agent)
    for i, keys in enumerate([("right",)] * 30 + [("down",)] * 30 + [("up", "left")] * 30):
        frame = tiny.step([s], [keys])[0]
        w.step(keys)
        n = int((frame == agent).all(-1).sum())
        assert 31 <= n <= 41, f"step {i}: agent has {n} px, a 6x6 block has 36 (+-15 %)"
        got, want = env.locate_agent(frame, theme), env.agent_center(theme, w.state())
        assert np.hypot(got[0] - want[0], got[1] - want[1]) <= 2.0, f"step {i}: agent at {got}, world {want}"


def _pillar_run(window, start, velocity, frames=20):
    """Object 0 crosses the pillar; True per generated frame when it equals the world's."""
    m = load_model(window=window)
    w = env.World(0, "forest")
    w.place((4, 54), [start, (2, 2)], [velocity, (1, 1)])
    truth = [w.render()] + [w.step(()) for _ in range(CONTEXT_FRAMES - 1)]
    s = m.init_state("forest")
    m.prefill(s, np.stack(truth), [()] * (CONTEXT_FRAMES - 1))
    exact, hidden = [], 0
    for _ in range(frames):
        frame, want = m.step([s], [()])[0], w.step(())
        hidden += not (want == env.THEME_LIST[0].objects[0]).all(-1).any()
        exact.append(bool(np.array_equal(frame, want)))
    assert hidden >= 2  # the object really went behind the pillar
    return exact


SLOW = [((30, 10), (1, 1)), ((52, 20), (-1, 1)), ((54, 50), (-1, -2))]  # fully hidden 4 frames
FAST = [((28, 10), (2, 2))]  # fully hidden 2 frames


@pytest.mark.parametrize("start, velocity", SLOW + FAST)
def test_the_long_window_brings_an_object_back_from_behind_the_pillar_exactly(start, velocity):
    exact = _pillar_run("long", start, velocity)
    assert all(exact), f"frames {[t for t, e in enumerate(exact) if not e]} differ from the world"


@pytest.mark.parametrize("start, velocity", SLOW)
def test_the_short_window_cannot_bring_back_an_object_hidden_longer_than_it_reaches(start, velocity):
    # The frame that last saw it is 4 back when it must re-emerge; short (4 frames) reaches 3 back.
    assert not all(_pillar_run("short", start, velocity))


@pytest.mark.parametrize("start, velocity", FAST)
def test_the_short_window_still_holds_an_object_hidden_for_2_frames(start, velocity):
    assert all(_pillar_run("short", start, velocity))


def test_bench_reports_the_weight_bytes_of_each_recipe():
    """`worldlab bench --json` carries the block linears' bytes against bf16: fp32 is 2x; tiny's W4A4 keeps its
    rank-48 fp32 branch (issue 24 says so: mostly not 4-bit), which makes it 1.29x bf16, not the codes' ~0.28x."""
    from worldlab.bench_model import bench

    got = {w: bench(load_model(weights=w), steps=10, batches=(1,))["weight_bytes"]["vs_bf16"]
           for w in ("fp32", "w4a4")}
    assert got["fp32"] == 2.0 and 1.2 < got["w4a4"] < 1.4, got
