"""DOOM as a ground-truth world: ViZDoom + Freedoom2, headless, 64x48 RGB, deterministic given (map, seed, keys).

The protocol's four arrow keys drive the game (up/down = forward/back, left/right = turn); a prompt picks a
style (worldlab.doom.styles). Everything the game reports beyond frames (position, angle) is for evaluation only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from worldlab.doom import reaper
from worldlab.doom.styles import DEFAULT_STYLE, apply_style, check_style
from worldlab.env import normalize_keys

HEIGHT, WIDTH = 48, 64  # 4:3 like the game; 8x down gives the 6x8 = 48-token latent grid
FRAME_SHAPE = (HEIGHT, WIDTH, 3)
DEFAULT_MAP = "my_way_home"
# Bundled scenario rooms (the 2-core budget's worlds) and the full Freedoom2 levels (the stretch).
SCENARIOS = ("my_way_home", "defend_the_center", "health_gathering")
LEVELS = tuple(f"MAP{i:02d}" for i in range(1, 33))
MAPS = SCENARIOS + LEVELS


_ORIGINS: OrderedDict = OrderedDict()  # sha1 of a reset frame -> (map, seed) of the episode it starts
_ORIGINS_KEPT = 4096
_SPAWN = threading.Lock()  # one game starting at a time, so the engine child that appears is this game's


def _frame_key(frame: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest()


def origin_of(frame: np.ndarray) -> tuple[str, int] | None:
    """(map, seed) of the episode whose first frame this is, if a DoomWorld in this process started it (None
    otherwise): the real game reads keys, not frames, so this is how it can replay a context it is handed."""
    return _ORIGINS.get(_frame_key(frame))


class DoomUnavailable(ValueError):
    """vizdoom is not importable here: one line, the rest of worldlab works without it."""


@dataclass(frozen=True)
class Controls:
    """What one model step is in game terms. One tic per step keeps the game at ~its own speed at 30 fps."""

    tics: int = 1  # game tics per step (the game runs at 35 tics/s)
    turn_deg: float = 5.0  # view turn per tic while left/right is held (~3.6 px at 64 px over a 90 deg FOV)
    move: float = 25.0  # DOOM forwardmove units per tic while up/down is held (25 = walking; momentum applies)


CONTROLS = Controls()


def vizdoom():
    try:
        import vizdoom as vzd
    except Exception as exc:  # ImportError, or a broken wheel failing to load its shared library
        raise DoomUnavailable(f"the DOOM world needs the vizdoom package, which does not import here "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              f"pip install vizdoom") from None
    return vzd


def check_map(name: str) -> str:
    if name not in MAPS:
        raise ValueError(f"unknown DOOM map {name!r}; maps are {', '.join(SCENARIOS)}, or a Freedoom2 level "
                         f"MAP01..MAP32")
    return name


def key_action(keys, controls: Controls = CONTROLS) -> list[float]:
    """Held keys -> [MOVE_FORWARD_BACKWARD_DELTA, TURN_LEFT_RIGHT_DELTA]; opposite keys cancel.
    ViZDoom's positive turn delta turns right (the view angle decreases)."""
    k = normalize_keys(keys)
    forward = ("up" in k) - ("down" in k)
    turn = ("right" in k) - ("left" in k)
    return [forward * controls.move, turn * controls.turn_deg]


def _downsample(screen: np.ndarray) -> np.ndarray:
    """(120, 160, 3) -> (48, 64, 3) uint8 by area averaging (PIL's box filter), deterministic."""
    from PIL import Image

    return np.asarray(Image.fromarray(screen).resize((WIDTH, HEIGHT), Image.BOX))


class DoomWorld:
    """DoomWorld(map, seed, style); reset() -> frame; step(keys) -> frame. An episode that ends (the goal
    reached, the player dead) restarts at once from the next seed, so a stream never stops."""

    def __init__(self, map: str = DEFAULT_MAP, seed: int = 0, style: str = DEFAULT_STYLE,
                 controls: Controls = CONTROLS):
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.map, self.seed, self.controls = check_map(map), int(seed), controls
        self.set_style(style)
        self._game = self._make_game()
        self.reset()

    def _make_game(self):
        vzd = vizdoom()
        root = os.path.dirname(vzd.__file__)
        game = vzd.DoomGame()
        if self.map in SCENARIOS:
            game.load_config(os.path.join(root, "scenarios", f"{self.map}.cfg"))
        else:
            game.set_doom_game_path(os.path.join(root, "freedoom2.wad"))
            game.set_doom_map(self.map)
        game.set_doom_config_path(os.path.join(tempfile.gettempdir(), "worldlab_vizdoom.ini"))  # not the cwd
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_render_hud(False)
        game.set_render_weapon(False)
        game.set_render_crosshair(False)
        game.set_render_messages(False)
        game.set_available_buttons([vzd.Button.MOVE_FORWARD_BACKWARD_DELTA, vzd.Button.TURN_LEFT_RIGHT_DELTA])
        game.set_available_game_variables([vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y,
                                           vzd.GameVariable.ANGLE])
        game.set_episode_timeout(10**9)
        game.set_mode(vzd.Mode.PLAYER)
        with _SPAWN:
            before = reaper.game_children()
            game.init()
            self._engines = reaper.game_children() - before
        for pid in self._engines:
            reaper.watch(pid)
        return game

    def set_style(self, style: str) -> None:
        self.style = check_style(style)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Back to the episode's first frame (of `seed`, when given: the world then follows that seed)."""
        if seed is not None:
            self.seed = int(seed)
        self.t, self.episode = 0, 0
        self._new_episode()
        frame = self.render()
        _ORIGINS[_frame_key(frame)] = (self.map, self.seed)
        while len(_ORIGINS) > _ORIGINS_KEPT:
            _ORIGINS.popitem(last=False)
        return frame

    def _new_episode(self) -> None:
        self._game.set_seed((self.seed + 7919 * self.episode) % 2**31)
        self._game.new_episode()
        self._state = self._game.get_state()

    def step(self, keys=()) -> np.ndarray:
        action = key_action(keys, self.controls)
        self._game.make_action(action, self.controls.tics)
        if self._game.is_episode_finished():
            self.episode += 1
            self._new_episode()
        else:
            self._state = self._game.get_state()
        self.t += 1
        return self.render()

    def raw(self) -> np.ndarray:
        """The current frame in the game's own colours (48, 64, 3) uint8."""
        return _downsample(self._state.screen_buffer)

    def render(self) -> np.ndarray:
        return apply_style(self.raw(), self.style)

    def pose(self) -> tuple[float, float, float]:
        """(x, y, angle in degrees): the player's true pose, for evaluation only (never a model input)."""
        x, y, angle = (float(v) for v in self._state.game_variables)
        return x, y, angle

    def close(self) -> None:
        game, self._game = getattr(self, "_game", None), None
        if game is not None:
            game.close()
            for pid in self._engines:
                reaper.forget(pid)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the engine process goes with it anyway
            pass


def rollout(map: str, seed: int, style: str, actions: Sequence) -> np.ndarray:
    """Frames (len(actions) + 1, 48, 64, 3): the reset frame, then one per action."""
    world = DoomWorld(map, seed, style)
    try:
        return np.stack([world.reset()] + [world.step(a) for a in actions])
    finally:
        world.close()
