"""DOOM styles: a prompt picks a colour/lighting transform of the true frames (same geometry, new look).

A prompt switch mid-stream therefore has a ground truth: the game's own frames under the new style.
"""

from __future__ import annotations

import numpy as np

from worldlab.env import prompt_words

DEFAULT_STYLE = "normal"
# style -> the prompt words that select it (the first style word in a prompt wins)
STYLE_WORDS = {
    "normal": ("normal", "plain", "classic", "original", "default"),
    "night": ("night", "dark", "midnight", "moonlight", "moonlit"),
    "infrared": ("infrared", "thermal", "heat", "ir"),
    "hell": ("hell", "hellish", "fire", "inferno", "lava", "red"),
    "toxic": ("toxic", "acid", "slime", "radioactive", "poison", "green"),
}
STYLES = tuple(STYLE_WORDS)
_BY_WORD = {w: s for s, words in STYLE_WORDS.items() for w in words}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def check_style(style: str) -> str:
    if style not in STYLE_WORDS:
        raise ValueError(f"unknown style {style!r}; styles are {', '.join(STYLES)}")
    return style


def style_for_prompt(prompt: str) -> str:
    """The first style word in the prompt selects the style; a prompt naming none gets DEFAULT_STYLE."""
    return next((_BY_WORD[w] for w in prompt_words(prompt) if w in _BY_WORD), DEFAULT_STYLE)


def _ramp(stops) -> np.ndarray:
    """A 256-entry RGB lookup table through (level, (r, g, b)) stops, linear in between."""
    levels = np.array([s[0] for s in stops], np.float32)
    colors = np.array([s[1] for s in stops], np.float32)
    x = np.arange(256, dtype=np.float32)
    return np.stack([np.interp(x, levels, colors[:, c]) for c in range(3)], -1)


# Luminance -> colour tables. Each keeps luminance monotone so the geometry stays readable in every style.
_TABLES = {
    "night": _ramp([(0, (0, 0, 6)), (128, (30, 44, 92)), (255, (120, 150, 210))]),
    "infrared": _ramp([(0, (0, 0, 0)), (60, (70, 0, 110)), (120, (200, 20, 60)), (180, (255, 150, 0)),
                       (255, (255, 255, 210))]),
    "hell": _ramp([(0, (10, 0, 0)), (110, (170, 30, 8)), (200, (255, 140, 40)), (255, (255, 230, 160))]),
    "toxic": _ramp([(0, (0, 8, 0)), (110, (40, 150, 20)), (200, (170, 255, 60)), (255, (235, 255, 190))]),
}


def apply_style(frames: np.ndarray, style: str) -> np.ndarray:
    """frames (..., H, W, 3) uint8 in the game's own colours -> the same frames in `style` (uint8)."""
    if check_style(style) == DEFAULT_STYLE:
        return frames
    luma = np.clip(np.rint(frames.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)  # (..., H, W)
    return np.rint(_TABLES[style][luma]).astype(np.uint8)
