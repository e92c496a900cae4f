"""Guardrails of a public service: access tokens, watermark + signed session records, safety filters and
rate limits, the encrypted triage buffer. Imports only worldlab.config and env (transport and server use it).
"""

import os
import pathlib


def config_dir() -> pathlib.Path:
    """Where a server keeps its keys, records and sealed triage files: $XDG_CONFIG_HOME/worldlab, else
    ~/.config/worldlab."""
    base = os.environ.get("XDG_CONFIG_HOME") or pathlib.Path.home() / ".config"
    return pathlib.Path(base) / "worldlab"
