"""The DOOM world model's checkpoint: dynamics + tokenizer + activation calibration (+ the style grade) in one
safetensors file, its configs in one metadata key that names the architecture (so no other loader takes the file).
"""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

import torch

from worldlab.config import CHECKPOINT_DIR
from worldlab.model.doom.dynamics import DoomConfig, DoomDynamics
from worldlab.model.doom.grade import GradeConfig, StyleGrade
from worldlab.model.doom.sampler import LatentSampler, SamplerConfig
from worldlab.model.doom.tokenizer import DoomTokenizer, TokenizerConfig

SHIPPED = CHECKPOINT_DIR / "doom.safetensors"
META_KEY = "doom_world_model"
PREFIX = {"dyn": "dyn.", "tok": "tok.", "calib": "calib.", "grade": "grade.", "sampler": "sampler."}
# parts a checkpoint may lack (saved before they existed): name -> (config class, module class)
OPTIONAL = {"grade": (GradeConfig, StyleGrade), "sampler": (SamplerConfig, LatentSampler)}


class DoomCheckpoint(NamedTuple):
    net: DoomDynamics
    tok: DoomTokenizer
    calib: dict
    extra: dict
    digest: str  # sha256 prefix of the file
    grade: StyleGrade | None  # None in a checkpoint saved before the grade existed
    sampler: LatentSampler | None  # None: the new latent is the regression head's mean


def save(path, net: DoomDynamics, tok: DoomTokenizer, calib: dict[str, torch.Tensor], extra: dict | None = None,
         grade: StyleGrade | None = None, sampler: LatentSampler | None = None) -> str:
    from safetensors.torch import save_file

    from worldlab.model.checkpoint import file_hash

    optional = {name: m for name, m in (("grade", grade), ("sampler", sampler)) if m is not None}
    parts = {"dyn": net.state_dict(), "tok": tok.state_dict(), "calib": calib,
             **{name: m.state_dict() for name, m in optional.items()}}
    tensors = {PREFIX[name] + k: v.detach().contiguous() for name, sd in parts.items() for k, v in sd.items()}
    info = {"config": net.cfg.to_dict(), "tokenizer": tok.cfg.to_dict(), "extra": extra or {},
            **{name: m.cfg.to_dict() for name, m in optional.items()}}
    meta = {META_KEY: json.dumps(info, sort_keys=True)}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return file_hash(path)


def _config(cls, values: dict):
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load(path=None, device="cpu") -> DoomCheckpoint:
    """-> DoomCheckpoint (grade / sampler None where the file has none). One-line errors for a missing, unreadable
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
    optional = {name: mod(_config(conf, info[name])) for name, (conf, mod) in OPTIONAL.items() if name in info}
    part = lambda name: {k[len(PREFIX[name]):]: v for k, v in tensors.items() if k.startswith(PREFIX[name])}  # noqa: E731
    try:
        net.load_state_dict(part("dyn"))
        tok.load_state_dict(part("tok"))
        for name, m in optional.items():
            m.load_state_dict(part(name))
    except RuntimeError as exc:  # a tensor missing or of another shape: name the first line torch gives
        raise ValueError(f"checkpoint {path} does not match its own config: {str(exc).splitlines()[0]}") from None
    optional = {name: m.to(device).eval() for name, m in optional.items()}
    return DoomCheckpoint(net.to(device).eval(), tok.to(device).eval(), part("calib"), info.get("extra", {}),
                          file_hash(path), optional.get("grade"), optional.get("sampler"))
