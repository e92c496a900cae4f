"""Configuration dataclasses and named presets: the one place for sizes, rates and policies.

Code reads numbers from here instead of scattering constants (see shared/CONVENTIONS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, asdict


@dataclass(frozen=True)
class SessionConfig:
    """One live session: pacing, codec and quality ladder."""

    fps_target: float = 30.0
    codec: str = "vp8"  # "vp8" | "h264"
    keyframe_interval_s: float = 0.75
    quality: str = "auto"  # "auto" | "low" | "high"
    max_message_bytes: int = 4096
    stats_interval_s: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelConfig:
    """Block-causal world transformer: one token per 8x8 patch, one block of tokens per frame."""

    name: str = "tiny"
    image_size: int = 64
    patch: int = 8
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 3  # head_dim = d_model / n_heads must be a multiple of 16 (NVFP4 KV blocks)
    mlp_ratio: int = 4
    n_actions: int = 9
    n_themes: int = 4
    sink: int = 1  # frames kept forever (attention sink)
    window_short: int = 6  # recent frames kept in the ring, "short" toggle (the live default)
    window_long: int = 12  # "long" toggle
    # training
    seq_frames: int = 16
    batch: int = 12
    steps: int = 800
    lr: float = 1.5e-3
    warmup: int = 100
    self_forcing_from: float = 0.3  # fraction of training after which own predictions are fed back
    switch_prob: float = 0.3  # fraction of sequences with a mid-sequence theme switch (recache training)

    @property
    def tokens_per_frame(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def window(self, which: str) -> int:
        if which not in ("short", "long"):
            raise ValueError(f"window must be 'short' or 'long', got {which!r}")
        return self.window_short if which == "short" else self.window_long

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # micro: trains in seconds; for tests only.
    "micro": ModelConfig(name="micro", d_model=64, n_layers=2, n_heads=2, window_short=3, window_long=6,
                         seq_frames=8, batch=4, steps=60, lr=3e-3, warmup=10),
    # tiny: the shipped checkpoint.
    "tiny": ModelConfig(),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
    return PRESETS[name]
