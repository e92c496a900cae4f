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
