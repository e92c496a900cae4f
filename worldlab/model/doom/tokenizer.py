"""The DOOM tokenizer: a conv autoencoder, a 48x64 RGB frame <-> a 6x8 grid of continuous latent tokens
(tanh-bounded), the learned encoder/decoder the DOOM world model predicts in. Saved as safetensors.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldlab.config import CHECKPOINT_DIR
from worldlab.doom import FRAME_SHAPE

SHIPPED = CHECKPOINT_DIR / "doom_tokenizer.safetensors"
META_KEY = "doom_tokenizer"  # the one metadata key: names the architecture, so no other loader takes the file


@dataclass(frozen=True)
class TokenizerConfig:
    """Sizes of the autoencoder (saved in its checkpoint's metadata). Three stride-2 stages: 48x64 -> 6x8."""

    widths: tuple[int, ...] = (32, 64, 128)  # channels at 24x32, 12x16, 6x8
    latent: int = 16  # channels per token
    res_blocks: int = 1  # residual blocks at the 6x8 grid, each side

    @property
    def grid(self) -> tuple[int, int]:
        down = 2 ** len(self.widths)
        return FRAME_SHAPE[0] // down, FRAME_SHAPE[1] // down

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.b(F.silu(self.a(F.silu(x))))


def _encoder(cfg: TokenizerConfig) -> nn.Sequential:
    layers, c_in = [], 3
    for i, c in enumerate(cfg.widths):
        layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.SiLU()]
        if i < len(cfg.widths) - 1:  # one 3x3 at each finer scale: edges are decided here
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
        c_in = c
    layers += [ResBlock(c_in) for _ in range(cfg.res_blocks)] + [nn.Conv2d(c_in, cfg.latent, 1)]
    return nn.Sequential(*layers)


def _decoder(cfg: TokenizerConfig) -> nn.Sequential:
    w = cfg.widths[::-1]
    layers = [nn.Conv2d(cfg.latent, w[0], 3, padding=1)] + [ResBlock(w[0]) for _ in range(cfg.res_blocks)]
    for c_in, c in zip(w, w[1:]):
        layers += [nn.SiLU(), nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1), nn.SiLU(),
                   nn.Conv2d(c, c, 3, padding=1)]
    # the last 2x up as a pixel shuffle from 24x32: sharp per-pixel output without a costly full-res conv
    layers += [nn.SiLU(), nn.Conv2d(w[-1], 3 * 4, 3, padding=1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers)


class DoomTokenizer(nn.Module):
    """encode (B, 3, 48, 64) in [0, 1] -> tokens (B, latent, 6, 8) in (-1, 1); decode the reverse."""

    def __init__(self, cfg: TokenizerConfig = TokenizerConfig()):
        super().__init__()
        self.cfg = cfg
        self.enc, self.dec = _encoder(cfg), _decoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.enc(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, 48, 64, 3) -> tokens (T, latent, 6, 8)."""
        return self.encode(to_tensor(frames, next(self.parameters()).device))

    @torch.no_grad()
    def decode_frames(self, z: torch.Tensor) -> np.ndarray:
        """tokens (T, latent, 6, 8) -> uint8 (T, 48, 64, 3)."""
        return to_frames(self.decode(z))

    def roundtrip(self, frames: np.ndarray) -> np.ndarray:
        return self.decode_frames(self.encode_frames(frames))


def to_tensor(frames: np.ndarray, device="cpu") -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255


def to_frames(x: torch.Tensor) -> np.ndarray:
    """float (T, 3, H, W) -> uint8 (T, H, W, 3), clamped and rounded."""
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save(path, net: DoomTokenizer, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    meta = {META_KEY: json.dumps({"config": net.cfg.to_dict(), "extra": extra or {}}, sort_keys=True)}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load(path=None, device: str = "cpu") -> tuple[DoomTokenizer, dict]:
    """-> (tokenizer in eval mode, extra metadata). One-line ValueError for a file that is not a tokenizer."""
    from worldlab.model.checkpoint import read_file
    from worldlab.model.registry import checkpoint_holds

    path = pathlib.Path(path) if path is not None else SHIPPED
    meta, tensors = read_file(path, "DOOM tokenizer checkpoint not found")
    if META_KEY not in meta:
        raise ValueError(f"checkpoint {path} holds {checkpoint_holds(meta)}, not a DOOM tokenizer")
    both = json.loads(meta[META_KEY])
    cfg = TokenizerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in both["config"].items()})
    net = DoomTokenizer(cfg).to(device)
    net.load_state_dict(tensors)
    return net.eval(), both.get("extra", {})
