"""What the serving layers need of a session's model without importing the model package: start a session's
state, describe the model (for records), and hot-switch a live session to another model variant.
"""

from __future__ import annotations

import asyncio

from worldlab.engine.scheduler import Scheduler
from worldlab.engine.session import Session
from worldlab.model import start_session
from worldlab.model.protocol import describe

__all__ = ["describe", "open_session", "switch_model"]


def open_session(model, prompt: str, seed: int = 0):
    """A fresh model state for `prompt`, prefilled with the environment's context frames (blocking)."""
    return start_session(model, prompt, seed)


async def switch_model(session: Session, current: Scheduler, new: Scheduler) -> None:
    """Move a live session to `new`'s model: a state prefilled from its recent frames and keys (built off the
    event loop), then it leaves `current`'s worker and joins `new`'s; the session's clock and id stay."""
    if new is current:
        return
    state = await asyncio.get_running_loop().run_in_executor(None, session.rebuild_state, new.model)
    current.detach(session)
    session.state = state
    new.add(session)
