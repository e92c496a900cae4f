"""The JupyterLab live player: `from worldlab.widget import Player; Player(prompt="a snowy forest")`.

Same pipeline, protocol and player.js as `worldlab serve`; see player.py.
"""

from worldlab.widget.player import Player, close_all

__all__ = ["Player", "close_all"]
