"""World models: the protocol the engine drives and the in-project block-causal transformer.

`load_model(...)` builds a WorldModel from a checkpoint (default: the shipped tiny one);
`start_session(model, prompt, seed)` prefills a session with ground-truth frames of the environment.
"""

from __future__ import annotations

from worldlab.config import CHECKPOINT_DIR
from worldlab.model.protocol import KEYS, WorldModel

__all__ = ["KEYS", "WorldModel", "load_model", "start_session", "tiny", "CONTEXT_FRAMES"]

CONTEXT_FRAMES = 8
SHIPPED_TINY = CHECKPOINT_DIR / "tiny.safetensors"


def load_model(checkpoint=None, *, weights="fp32", kv="none", window="short", device="cpu", sink=None):
    """A TransformerWorldModel with the three research toggles applied (weights, kv, window); `sink`
    overrides the attention-sink frames kept forever (0..the trained sink; None = as trained)."""
    from worldlab.model import checkpoint as ckpt
    from worldlab.config import Toggles
    from worldlab.model.quantize import quantize_model
    from worldlab.model.world_model import TransformerWorldModel

    Toggles(weights, window, kv)  # one clear error for a bad value, before the checkpoint loads
    net, calib, _extra, digest = ckpt.load(checkpoint, device=device)
    if weights != "fp32":
        if not calib:
            raise ValueError("checkpoint has no activation calibration; it cannot be quantized")
        quantize_model(net, weights, calib)
    return TransformerWorldModel(net, net.cfg, weights=weights, kv=kv, window=window, device=device,
                                 checkpoint_hash=digest, sink=sink, checkpoint_path=ckpt.resolve(checkpoint))


def tiny(*, toggles=None, device: str = "cpu", checkpoint=None):
    """The in-project block-causal transformer: the shipped tiny checkpoint, or the one given."""
    from worldlab.config import Toggles

    if checkpoint is None and not SHIPPED_TINY.is_file():
        raise FileNotFoundError(f"no shipped checkpoint at {SHIPPED_TINY}; pass --checkpoint or --model oracle")
    return load_model(checkpoint, device=device, **(toggles or Toggles()).to_dict())


tiny.default_checkpoint = SHIPPED_TINY  # the registry hashes it for provenance and the sweep cache


def start_session(model, prompt: str, seed: int = 0, context: int = CONTEXT_FRAMES):
    """A fresh session prefilled with `context` ground-truth frames: the model's own world when it has one
    (the optional `model.context(prompt, seed, n) -> (frames, actions)`, e.g. DOOM), else the sprite world
    World(seed, theme of prompt) under random keys."""
    from worldlab import env

    if context < 2:
        raise ValueError(f"context must be >= 2 frames, got {context}")
    state = model.init_state(prompt)
    if callable(getattr(model, "context", None)):
        frames, actions = model.context(prompt, seed, context)
    else:
        actions = env.random_actions(context - 1, seed)
        frames = env.rollout(seed, env.theme_for_prompt(prompt), actions)
    model.prefill(state, frames, actions)
    return state
