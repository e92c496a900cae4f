"""The DOOM world model's checkpoint: dynamics + tokenizer + activation calibration in one safetensors file,
its configs in one metadata key that names the architecture (so no other loader takes the file).
"""

from __future__ import annotations

import json
import pathlib

import torch

from worldlab.config import CHECKPOINT_DIR
from worldlab.model.doom.dynamics import DoomConfig, DoomDynamics
from worldlab.model.doom.tokenizer import DoomTokenizer, TokenizerConfig

SHIPPED = CHECKPOINT_DIR / "doom.safetensors"
META_KEY = "doom_world_model"
PREFIX = {"dyn": "dyn.", "tok": "tok.", "calib": "calib."}


def save(path, net: DoomDynamics, tok: DoomTokenizer, calib: dict[str, torch.Tensor], extra: dict | None = None) -> str:
    from safetensors.torch import save_file

    from worldlab.model.checkpoint import file_hash

    tensors = {PREFIX["dyn"] + k: v.detach().contiguous() for k, v in net.state_dict().items()}
    tensors.update({PREFIX["tok"] + k: v.detach().contiguous() for k, v in tok.state_dict().items()})
    tensors.update({PREFIX["calib"] + k: v.detach().contiguous() for k, v in calib.items()})
    meta = {META_KEY: json.dumps({"config": net.cfg.to_dict(), "tokenizer": tok.cfg.to_dict(), "extra": extra or {}},
                                 sort_keys=True)}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return file_hash(path)


def _config(cls, values: dict):
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load(path=None, device="cpu") -> tuple[DoomDynamics, DoomTokenizer, dict, dict, str]:
    """-> (dynamics, tokenizer, calibration, extra, sha256 prefix). One-line errors for a missing, unreadable
    or foreign file (naming what it holds)."""
    from worldlab.model.checkpoint import file_hash, read_file
    from worldlab.model.registry import checkpoint_holds

    path = pathlib.Path(path) if path is not None else SHIPPED
    meta, tensors = read_file(path, f"no DOOM checkpoint (train one with `worldlab train --preset doom --out "
                                    f"{path}`)")
    if META_KEY not in meta:
        raise ValueError(f"checkpoint {path} holds {checkpoint_holds(meta)}, not a DOOM world model")
    info = json.loads(meta[META_KEY])
    net = DoomDynamics(_config(DoomConfig, info["config"]))
    tok = DoomTokenizer(_config(TokenizerConfig, info["tokenizer"]))
    part = lambda name: {k[len(PREFIX[name]):]: v for k, v in tensors.items() if k.startswith(PREFIX[name])}  # noqa: E731
    try:
        net.load_state_dict(part("dyn"))
        tok.load_state_dict(part("tok"))
    except RuntimeError as exc:  # a tensor missing or of another shape: name the first line torch gives
        raise ValueError(f"checkpoint {path} does not match its own config: {str(exc).splitlines()[0]}") from None
    return net.to(device).eval(), tok.to(device).eval(), part("calib"), info.get("extra", {}), file_hash(path)
