"""The session engine: per-session state and pacing, a latest-frame slot, and a scheduler thread that
micro-batches the due sessions of one model into a single WorldModel.step per tick.
"""

from worldlab.engine.scheduler import Scheduler
from worldlab.engine.session import Session
from worldlab.engine.slot import LatestFrameSlot

__all__ = ["LatestFrameSlot", "Scheduler", "Session"]
