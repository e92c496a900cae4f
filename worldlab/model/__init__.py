"""World models: the protocol the engine drives and the in-project block-causal transformer.

See protocol.py for the contract; presets live in worldlab.config.
"""

from worldlab.model.protocol import KEYS, WorldModel

__all__ = ["KEYS", "WorldModel"]
