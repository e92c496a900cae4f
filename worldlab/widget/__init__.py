"""The JupyterLab live player: `from worldlab.widget import Player; Player(prompt="a snowy forest")`.

Same pipeline, protocol and player.js as `worldlab serve`; see player.py. Imported lazily so the Jupyter
server extension (relay.py) loads without torch.
"""

__all__ = ["Player", "close_all"]


def __getattr__(name: str):
    if name in __all__:
        from worldlab.widget import player

        return getattr(player, name)
    raise AttributeError(f"module 'worldlab.widget' has no attribute {name!r}")
