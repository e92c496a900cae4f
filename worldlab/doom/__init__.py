"""The DOOM world (ViZDoom + Freedoom2): the game as a deterministic ground truth, its styles, and a scripted
explorer for training data. Importing this package does not import vizdoom; making a world does.
"""

from worldlab.doom.explorer import Explorer, context, explore
from worldlab.doom.game import (CONTROLS, DEFAULT_MAP, FRAME_SHAPE, MAPS, SCENARIOS, Controls, DoomUnavailable,
                                DoomWorld, check_map, key_action, origin_of, rollout, vizdoom)
from worldlab.doom.styles import DEFAULT_STYLE, STYLES, apply_style, check_style, style_for_prompt

__all__ = ["CONTROLS", "DEFAULT_MAP", "DEFAULT_STYLE", "FRAME_SHAPE", "MAPS", "SCENARIOS", "STYLES", "Controls",
           "DoomUnavailable", "DoomWorld", "Explorer", "apply_style", "check_map", "check_style", "context", "explore",
           "key_action", "origin_of", "rollout", "style_for_prompt", "vizdoom"]
