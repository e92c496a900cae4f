"""Rollout gallery for `worldlab eval --gallery PATH.png`: per seed, a row of ground-truth frames above a
row of model frames at a few fixed steps, upscaled and labelled, drawn from frames already rolled out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

STEPS = (1, 8, 32, 64, 300)  # 1-based rollout steps shown (those within the run)
SCALE = 3  # nearest-neighbour upscale of each frame (64x64 sprites, 48x64 DOOM)
LABEL_W, HEADER_H, GAP = 96, 16, 4
BG, INK = (24, 24, 24), (235, 235, 235)


def check_path(path) -> Path:
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"--gallery must be a .png path, got {str(path)!r}")
    if not p.parent.is_dir():
        raise ValueError(f"--gallery directory does not exist: {str(p.parent)!r}")
    return p


def shown_steps(steps: int) -> list[int]:
    return [s for s in STEPS if s <= steps]


def _tile(frame: np.ndarray) -> Image.Image:
    return Image.fromarray(frame).resize((frame.shape[1] * SCALE, frame.shape[0] * SCALE), Image.NEAREST)


def write_gallery(path, rows) -> list[int]:
    """rows: [(seed, truth (N, H, W, 3), model (N, H, W, 3))] with N = rollout steps. Returns the steps shown."""
    p = check_path(path)
    n_steps = len(rows[0][1])
    steps = shown_steps(n_steps)
    tile_h, tile_w = rows[0][1].shape[1] * SCALE, rows[0][1].shape[2] * SCALE  # frames (N, H, W, 3)
    width = LABEL_W + len(steps) * (tile_w + GAP)
    height = HEADER_H + 2 * len(rows) * (tile_h + GAP)
    img = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(img)
    for j, step in enumerate(steps):
        draw.text((LABEL_W + j * (tile_w + GAP), 2), f"step {step}", fill=INK)
    for i, (seed, truth, model) in enumerate(rows):
        for k, (name, frames) in enumerate((("truth", truth), ("model", model))):
            y = HEADER_H + (2 * i + k) * (tile_h + GAP)
            draw.text((4, y + tile_h // 2 - 6), f"seed {seed} {name}", fill=INK)
            for j, step in enumerate(steps):
                img.paste(_tile(frames[step - 1]), (LABEL_W + j * (tile_w + GAP), y))
    img.save(p, format="PNG")
    return steps
