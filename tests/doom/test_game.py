"""The DOOM world: determinism given (map, seed, keys), the key mapping, styles, the explorer, bad input."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("vizdoom", reason="the DOOM world needs the vizdoom wheel (a declared dependency)")

from worldlab import doom  # noqa: E402

KEYS = [("up",)] * 6 + [("left",)] * 5 + [("up", "right")] * 5 + [()] * 2 + [("down",)] * 3


def test_same_map_seed_and_keys_give_the_same_frames():
    a = doom.rollout("my_way_home", 3, "normal", KEYS)
    b = doom.rollout("my_way_home", 3, "normal", KEYS)
    assert a.shape == (len(KEYS) + 1, 48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    other = doom.rollout("my_way_home", 4, "normal", KEYS)
    assert not np.array_equal(a[0], other[0])  # the seed picks the spawn


def test_reset_replays_the_episode():
    world = doom.DoomWorld("my_way_home", 9)
    first = [world.reset()] + [world.step(k) for k in KEYS]
    again = [world.reset()] + [world.step(k) for k in KEYS]
    world.close()
    assert all(np.array_equal(x, y) for x, y in zip(first, again))


def _turn(keys, steps=6):
    world = doom.DoomWorld("my_way_home", 2)
    _x, _y, a0 = world.pose()
    for _ in range(steps):
        world.step(keys)
    x, y, a1 = world.pose()
    world.close()
    return (a1 - a0 + 180) % 360 - 180, (x, y)


def test_left_turns_left_right_turns_right_by_the_controls_angle():
    step = doom.CONTROLS.turn_deg * doom.CONTROLS.tics
    left, _ = _turn(("left",))
    right, _ = _turn(("right",))
    assert left == pytest.approx(6 * step, abs=0.1)  # DOOM angles grow counter-clockwise: left is positive
    assert right == pytest.approx(-6 * step, abs=0.1)
    assert _turn(("left", "right"))[0] == pytest.approx(0, abs=1e-6)  # opposite keys cancel


def test_up_walks_forward_and_down_walks_back():
    def walk(keys):
        world = doom.DoomWorld("defend_the_center", 0)  # a round room: nothing in the way for a few steps
        x0, y0, angle = world.pose()
        for _ in range(8):
            world.step(keys)
        x, y, _ = world.pose()
        world.close()
        heading = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
        return float(np.dot([x - x0, y - y0], heading))

    assert walk(("up",)) > 10
    assert walk(("down",)) < -10
    assert walk(()) == 0


def test_key_action_maps_the_four_keys_and_diagonals():
    c = doom.CONTROLS
    assert doom.key_action(()) == [0, 0]
    assert doom.key_action(("up",)) == [c.move, 0]
    assert doom.key_action(("down", "left")) == [-c.move, -c.turn_deg]
    assert doom.key_action(("up", "down", "right")) == [0, c.turn_deg]
    with pytest.raises(ValueError, match="unknown key 'jump'"):
        doom.key_action(("jump",))


def test_style_is_a_colour_transform_of_the_same_geometry():
    raw = doom.rollout("my_way_home", 1, "normal", KEYS[:4])
    for style in doom.STYLES[1:]:
        styled = doom.rollout("my_way_home", 1, style, KEYS[:4])
        assert np.array_equal(styled, doom.apply_style(raw, style))
        assert np.abs(styled.astype(int) - raw).mean() > 10  # a new look (these corridors are dark: ~17-60)...
        luma = lambda f: f.astype(np.float64) @ [0.299, 0.587, 0.114]  # noqa: E731
        assert np.corrcoef(luma(styled).ravel(), luma(raw).ravel())[0, 1] > 0.9  # ...of the same geometry


def test_prompt_words_select_the_style():
    assert doom.style_for_prompt("a walk at night") == "night"
    assert doom.style_for_prompt("Thermal camera, then hell") == "infrared"
    assert doom.style_for_prompt("toxic waste") == "toxic"
    assert doom.style_for_prompt("just a corridor") == doom.DEFAULT_STYLE


def test_explorer_is_deterministic_and_mostly_moves():
    frames, actions, poses = doom.explore("my_way_home", 11, 120)
    again, actions2, _ = doom.explore("my_way_home", 11, 120)
    assert np.array_equal(frames, again) and actions == actions2
    assert len(actions) == 120 and frames.shape[0] == 121 and poses.shape == (121, 3)
    assert sum("up" in a for a in actions) > 20  # it walks...
    assert sum(("left" in a) != ("right" in a) for a in actions) > 20  # ...and turns
    assert np.hypot(*np.ptp(poses[:, :2], axis=0)) > 60  # and gets somewhere


def test_unknown_map_style_and_seed_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown DOOM map 'e1m1'; maps are my_way_home"):
        doom.DoomWorld("e1m1")
    with pytest.raises(ValueError, match="unknown style 'sepia'; styles are normal, night"):
        doom.DoomWorld(style="sepia")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        doom.DoomWorld(seed=-1)


def test_a_missing_vizdoom_is_one_line_and_the_rest_of_worldlab_works():
    code = (
        "import sys; sys.modules['vizdoom'] = None\n"
        "from worldlab import doom, env\n"
        "env.rollout(0, 'forest', [()])\n"  # the sprite world does not need it
        "try:\n    doom.DoomWorld()\nexcept doom.DoomUnavailable as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "needs the vizdoom package" in lines[0] and "pip install vizdoom" in lines[0]


def test_the_real_game_replays_the_episode_whose_context_it_is_given():
    from worldlab.engine.doom_engine import DoomEngine

    frames, actions, _ = doom.explore("my_way_home", 100_003, 12)
    engine = DoomEngine()  # its own seed is 0: the context's seed comes from the frames it is handed
    state = engine.init_state("normal")
    engine.prefill(state, frames[:8], actions[:7])
    out = engine.step([state] * 1, [actions[7]])
    assert np.array_equal(out[0], frames[8])
    assert doom.origin_of(frames[0]) == ("my_way_home", 100_003) and doom.origin_of(frames[5]) is None


def test_the_doom_commands_say_in_one_line_when_vizdoom_is_missing():
    code = ("import sys; sys.modules['vizdoom'] = None\n"
            "from worldlab.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    for argv in (["eval", "--model", "doom-engine", "--steps", "4"],
                 ["train", "--preset", "doom", "--out", "/tmp/never.safetensors"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        err = out.stderr.strip().splitlines()
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert len(err) == 1 and "needs the vizdoom package" in err[0], out.stderr


def test_a_killed_owner_takes_its_game_engines_with_it():
    """A Jupyter kernel or a server killed with SIGKILL cannot close its games; the reaper stops the engines."""
    import signal
    import subprocess
    import sys
    import time

    code = ("from worldlab.doom import DoomWorld; w = DoomWorld(); print(sorted(w._engines), flush=True); "
            "import time; time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    engines = eval(owner.stdout.readline())
    assert len(engines) == 1 and _running(engines[0])
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 5
    while _running(engines[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(engines[0])


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
