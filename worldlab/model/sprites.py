"""The sprite tokenizer and compositor: frames <-> per-sprite observation boxes, positions -> frames.

Tokenizer: each pixel -> its class (nearest theme colour), each sprite -> the box of its visible pixels.
Decoder: a compositor whose plate, sprite sizes and depth order are fit from training frames (`fit_codec`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from worldlab import env

# Pixel classes follow env.palette order; the last three are the sprites the transformer tracks.
N_CLASSES = 6
SPRITE_CLASSES = (3, 4, 5)  # agent, object 0, object 1
N_SPRITES = len(SPRITE_CLASSES)
STATIC_CLASSES = (0, 1, 2)  # two background colours, the pillar
ABSENT = env.SIZE  # box coordinate of a sprite with no visible pixel (embedding index 64)


def all_palettes() -> torch.Tensor:
    """(n_themes * 6, 3) float: every theme's colours; colour i has class i % 6."""
    return torch.from_numpy(np.stack([env.palette(t) for t in env.THEMES])).to(torch.float32).reshape(-1, 3)


def true_positions(state: dict) -> list[list[int]]:
    """World.state() -> [[x, y]] for the agent and both objects (the decoder's target)."""
    return [list(state["agent"]), *[list(o) for o in state["objects"]]]


class SpriteCodec(nn.Module):
    """Buffers fit from data (saved in the checkpoint): palettes, static plate, sprite sizes, depth order."""

    def __init__(self, size: int = env.SIZE):
        super().__init__()
        self.size = size
        self.register_buffer("palettes", all_palettes())  # (themes * 6, 3)
        self.register_buffer("plate", torch.zeros(size, size, dtype=torch.int64))  # static class map
        self.register_buffer("sprite_size", torch.ones(N_SPRITES, dtype=torch.int64))
        # depth rank per class (higher is drawn later); only pillar and sprite ranks matter
        self.register_buffer("depth", torch.arange(N_CLASSES, dtype=torch.int64))
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.register_buffer("xs", xs, persistent=False)
        self.register_buffer("ys", ys, persistent=False)

    # -- tokenizer ------------------------------------------------------------------------------
    def classes(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., H, W, 3) uint8 -> (..., H, W) class: nearest colour over every theme (prompt-agnostic)."""
        f = frames.to(torch.float32)
        p = self.palettes
        d = p.square().sum(-1) - 2.0 * f @ p.T  # (..., H, W, C): |x - c|^2 - |x|^2
        return d.argmin(-1) % N_CLASSES

    def observe(self, classes: torch.Tensor) -> torch.Tensor:
        """(..., H, W) classes -> (..., 3, 4) long boxes [x0, y0, x1, y1] of visible sprite pixels (ABSENT if none)."""
        sprite = torch.tensor(SPRITE_CLASSES, device=classes.device)
        m = classes[..., None, :, :] == sprite[:, None, None]  # (..., 3, H, W)
        cols, rows = m.any(-2), m.any(-1)  # (..., 3, W), (..., 3, H)
        idx = torch.arange(self.size, device=classes.device)
        big = self.size
        x0 = torch.where(cols, idx, big).amin(-1)
        x1 = torch.where(cols, idx, -1).amax(-1)
        y0 = torch.where(rows, idx, big).amin(-1)
        y1 = torch.where(rows, idx, -1).amax(-1)
        box = torch.stack([x0, y0, x1, y1], -1)
        return torch.where(cols.any(-1)[..., None], box, torch.full_like(box, ABSENT))

    def tokenize(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., H, W, 3) uint8 frames -> (..., 3, 4) observation boxes."""
        return self.observe(self.classes(frames))

    # -- decoder --------------------------------------------------------------------------------
    def compose(self, positions: torch.Tensor) -> torch.Tensor:
        """(..., 3, 2) long [x, y] top-left corners -> (..., H, W) class map, layers painted by depth."""
        lead = positions.shape[:-2]
        out = self.plate.expand(*lead, self.size, self.size).clone()
        pillar = self.plate == 2
        layers = sorted([2, *SPRITE_CLASSES], key=lambda c: int(self.depth[c]))
        for c in layers:
            if c == 2:
                out = torch.where(pillar, 2, out)
                continue
            out = torch.where(self.cover(positions, SPRITE_CLASSES.index(c)), c, out)
        return out

    def cover(self, positions: torch.Tensor, i: int) -> torch.Tensor:
        """(..., 3, 2) corners -> (..., H, W) bool: the pixels sprite i covers, visible or not."""
        x, y = positions[..., i, 0, None, None], positions[..., i, 1, None, None]
        s = self.sprite_size[i]
        return (self.xs >= x) & (self.xs < x + s) & (self.ys >= y) & (self.ys < y + s)

    def paint(self, classes: torch.Tensor, themes: torch.Tensor) -> torch.Tensor:
        """(..., H, W) classes, (...) theme indices -> (..., H, W, 3) uint8 frames."""
        idx = classes + N_CLASSES * themes[..., None, None]
        return self.palettes[idx].to(torch.uint8)

    def render(self, positions: torch.Tensor, themes: torch.Tensor) -> torch.Tensor:
        return self.paint(self.compose(positions), themes)


@torch.no_grad()
def fit_codec(codec: SpriteCodec, frames: torch.Tensor, positions: torch.Tensor) -> SpriteCodec:
    """Fit plate, sprite sizes and depth order from frames (N, H, W, 3) uint8 and true positions (N, 3, 2).

    plate = per-pixel most frequent static class; size = largest visible extent; depth: for each pair of
    layers, which one shows where both cover a pixel (votes over the data)."""
    cls = codec.classes(frames)  # (N, H, W)
    static = torch.stack([(cls == c).sum(0) for c in STATIC_CLASSES])  # (3, H, W) counts
    codec.plate.copy_(torch.tensor(STATIC_CLASSES)[static.argmax(0)])
    boxes = codec.observe(cls)
    seen = boxes[..., 0] != ABSENT
    ext = torch.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) + 1
    codec.sprite_size.copy_(torch.where(seen, ext, 0).amax(0))
    cover = {2: (codec.plate == 2).expand_as(cls)}
    for i, c in enumerate(SPRITE_CLASSES):
        cover[c] = codec.cover(positions, i)
    layers = [2, *SPRITE_CLASSES]
    wins = {c: 0 for c in layers}
    for a in layers:
        for b in layers:
            if a < b:
                both = cover[a] & cover[b]
                a_on_top = int((both & (cls == a)).sum()) >= int((both & (cls == b)).sum())
                wins[a if a_on_top else b] += 1
    depth = torch.arange(N_CLASSES)
    for c in layers:
        depth[c] = N_CLASSES + wins[c]
    codec.depth.copy_(depth)
    return codec
