"""The ground-truth environment: determinism, controls, hidden velocity, occlusion, prompt -> theme."""

import numpy as np
import pytest

from worldlab import env


def test_deterministic_given_seed_theme_actions():
    acts = env.random_actions(40, seed=5)
    a, b = env.rollout(5, "snow", acts), env.rollout(5, "snow", acts)
    assert a.shape == (41, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, env.rollout(6, "snow", acts))


def test_keys_move_the_agent_and_opposites_cancel():
    w = env.World(1, "forest")
    x0, y0 = w.state()["agent"]
    w.step(["right"])
    w.step(["down", "right"])
    w.step(["left", "right"])
    assert w.state()["agent"] == (x0 + 2 * env.STEP_PX, y0 + env.STEP_PX)
    for _ in range(60):
        w.step(["up"])
    assert w.state()["agent"][1] == 0  # clamped at the wall


def test_velocity_is_not_visible_in_one_frame():
    # Two worlds whose objects sit at the same place but move differently render the same frame.
    w1, w2 = env.World(3, "desert"), env.World(3, "desert")
    w2.velocities = -w2.velocities
    assert np.array_equal(w1.render(), w2.render())
    assert not np.array_equal(w1.step(()), w2.step(()))


def test_objects_pass_behind_the_occluder():
    w = env.World(0, "night")
    w.objects[0] = (env.OCCLUDER_X[0] + 1, 20)
    frame = w.render()
    color = np.array(env._BY_NAME["night"].objects[0])
    assert not (frame == color).all(-1).any()  # hidden
    assert w.state()["objects"][0] == (env.OCCLUDER_X[0] + 1, 20)  # but still there


def test_objects_bounce_and_stay_inside():
    w = env.World(9, "snow")
    for _ in range(500):
        w.step(())
        for x, y in w.state()["objects"]:
            assert 0 <= x <= 64 - env.OBJECT and 0 <= y <= 64 - env.OBJECT


@pytest.mark.parametrize("prompt, theme", [
    ("a snowy forest", "snow"), ("Deep in the FOREST", "forest"), ("sand dunes at noon", "desert"),
    ("midnight", "night"), ("a calm lake", env.DEFAULT_THEME), ("!!!", env.DEFAULT_THEME),
])
def test_prompt_selects_theme(prompt, theme):
    assert env.theme_for_prompt(prompt) == theme


def test_themes_look_different_and_agent_is_locatable():
    assert set(env.THEMES) >= {"forest", "desert", "snow", "night"}
    frames = {t: env.World(2, t).render() for t in env.THEMES}
    for t in env.THEMES:
        w = env.World(2, t)
        found = env.locate_agent(frames[t], t)
        assert found is not None and np.hypot(*(np.array(found) - env.agent_center(t, w.state()))) < 0.5
        for u in env.THEMES:
            if u != t:
                assert np.abs(frames[t].astype(int) - frames[u]).mean() > 20


@pytest.mark.parametrize("call, match", [
    (lambda: env.World(0, "mars"), "unknown theme 'mars'"),
    (lambda: env.World(-1), "seed"),
    (lambda: env.World(0).step(["jump"]), "unknown key 'jump'"),
    (lambda: env.World(0).step("up"), "list of key names"),
    (lambda: env.theme_for_prompt(""), "prompt is empty"),
    (lambda: env.theme_for_prompt("x" * 501), "limit is 500"),
    (lambda: env.theme_for_prompt(None), "prompt must be a string"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
