"""The DOOM model's style grade: a learned per-pixel colour transform from one style's look to another's, which
the world model applies to its newest frame on a prompt switch so the next frames are drawn in the new look.

A style in this world is a colour grade of the same geometry (worldlab.doom.styles), so the grade sees one pixel
at a time; it learns the pair's mapping from frames rendered in both styles (nothing of the style tables).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldlab.doom import STYLES


@dataclass(frozen=True)
class GradeConfig:
    n_styles: int = len(STYLES)
    hidden: int = 48
    steps: int = 1500
    batch_frames: int = 8
    lr: float = 3e-3

    def to_dict(self) -> dict:
        return asdict(self)


class StyleGrade(nn.Module):
    """frames (B, 3, H, W) in [0, 1] drawn in style `src` -> the same frames in style `dst` (per-pixel MLP,
    the pair's embedding scales and shifts the first layer)."""

    def __init__(self, cfg: GradeConfig = GradeConfig()):
        super().__init__()
        self.cfg = cfg
        h, n = cfg.hidden, cfg.n_styles
        self.inp = nn.Conv2d(3, h, 1)
        self.pair = nn.Embedding(n * n, 2 * h)
        self.mid = nn.Conv2d(h, h, 1)
        self.out = nn.Conv2d(h, 3, 1)

    def forward(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        scale, shift = self.pair(src * self.cfg.n_styles + dst)[:, :, None, None].chunk(2, 1)
        h = F.silu(self.inp(x) * (1 + scale) + shift)
        return torch.sigmoid(self.out(F.silu(self.mid(h))))

    @torch.inference_mode()
    def apply(self, frame: torch.Tensor, src: str, dst: str) -> torch.Tensor:
        """One frame (3, H, W) in [0, 1], style names -> the frame in `dst` on the uint8 grid."""
        if src == dst:
            return frame
        ids = lambda s: torch.tensor([STYLES.index(s)], device=frame.device)  # noqa: E731
        return torch.round(self(frame[None], ids(src), ids(dst))[0] * 255) / 255


def _pairs(rng, n: int, n_styles: int) -> tuple[np.ndarray, np.ndarray]:
    """n (src, dst) pairs of different styles."""
    src = rng.integers(0, n_styles, n)
    dst = (src + rng.integers(1, n_styles, n)) % n_styles
    return src, dst


def train_grade(raw: np.ndarray, cfg: GradeConfig = GradeConfig(), *, seed: int = 0) -> tuple[StyleGrade, dict]:
    """raw: training frames (N, H, W, 3) uint8 in the game's own colours -> a trained grade and its summary
    (PSNR on held-back frames of the same set: the pair mapping, not new geometry, is what is learned)."""
    from worldlab.model.doom.data import styled

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    grade = StyleGrade(cfg)
    opt = torch.optim.Adam(grade.parameters(), lr=cfg.lr)
    fit, held = raw[: len(raw) * 9 // 10], raw[len(raw) * 9 // 10:]
    t0 = time.monotonic()

    def pair_batch(frames: np.ndarray):
        idx = rng.integers(0, len(frames), cfg.batch_frames)
        src, dst = _pairs(rng, cfg.batch_frames, cfg.n_styles)
        x = styled(frames[idx], [STYLES[s] for s in src])
        y = styled(frames[idx], [STYLES[d] for d in dst])
        t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
        return t(x), torch.from_numpy(src), torch.from_numpy(dst), t(y)

    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        x, src, dst, y = pair_batch(fit)
        loss = (grade(x, src, dst) - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    grade.eval()
    with torch.no_grad():
        x, src, dst, y = pair_batch(held)
        mse = (torch.round(grade(x, src, dst) * 255) / 255 - y).pow(2).mean().item()
    return grade, {"grade_steps": cfg.steps, "grade_held_psnr": round(float(10 * np.log10(1 / max(mse, 1e-10))), 2),
                   "grade_wall_s": round(time.monotonic() - t0, 1)}
