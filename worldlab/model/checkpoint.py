"""Checkpoints as safetensors: weights, activation calibration (for W4A4/W8A8) and the config in metadata.

Loading checks every tensor's name and shape against the config and names the first mismatch.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import torch
from safetensors.torch import load_file, save_file

from worldlab.config import ModelConfig
from worldlab.model import SHIPPED_TINY as SHIPPED
from worldlab.model.registry import refuse_part
from worldlab.model.transformer import WorldTransformer

CALIB_PREFIX = "calib."
META_KEY = "worldlab"  # one metadata key: safetensors writes several in a random order, and the hash must not vary


def save(path, net: WorldTransformer, calib: dict[str, torch.Tensor], extra: dict | None = None) -> str:
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    tensors.update({CALIB_PREFIX + k: v.contiguous() for k, v in calib.items()})
    meta = {META_KEY: json.dumps({"config": net.cfg.to_dict(), "extra": extra or {}}, sort_keys=True)}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return file_hash(path)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hash(path) -> str:
    """The short form models report in describe(): the first 16 hex digits of the sha256."""
    return file_sha256(path)[:16]


def read_file(path, missing: str = "checkpoint not found") -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; FileNotFoundError `missing: path` when there is none, a
    one-line ValueError when it is not a readable safetensors file."""
    from safetensors import safe_open

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{missing}: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated/foreign files
        raise ValueError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None


def read_metadata(path) -> dict:
    """{"config": json str, "extra": json str} from either layout (one `worldlab` key, or the older two keys)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if META_KEY in meta:
        try:
            both = json.loads(meta[META_KEY])
            return {"config": json.dumps(both["config"]), "extra": json.dumps(both.get("extra", {}))}
        except (ValueError, KeyError, TypeError):
            return {}
    return meta


def resolve(path=None) -> pathlib.Path:
    """The checkpoint file `path` names; None is the shipped one."""
    return pathlib.Path(path) if path is not None else SHIPPED


def load(path=None, device="cpu") -> tuple[WorldTransformer, dict[str, torch.Tensor], dict, str]:
    """-> (net, calibration, extra metadata, sha256 prefix). Raises ValueError/FileNotFoundError clearly."""
    path = resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        meta = read_metadata(path)
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated/foreign files
        raise ValueError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None
    refuse_part(path, meta, "a tiny transformer")
    if "config" not in meta:
        if "conv" in meta:
            raise ValueError(f"checkpoint {path} holds a conv model, not a tiny transformer: use --model conv "
                             f"--checkpoint {path} (or --model {path})")
        from worldlab.model.registry import checkpoint_holds

        raise ValueError(f"checkpoint {path} holds {checkpoint_holds(meta)}, not a tiny transformer")
    try:
        cfg = ModelConfig(**json.loads(meta["config"]))
    except TypeError as exc:  # a config field this version does not have: a checkpoint of another model design
        raise ValueError(f"checkpoint {path} was written for another model design ({exc}); "
                         "retrain it with `worldlab train`") from None
    net = WorldTransformer(cfg).to(device)
    want = net.state_dict()
    weights = {k: v for k, v in tensors.items() if not k.startswith(CALIB_PREFIX)}
    missing = sorted(set(want) - set(weights))
    if missing:
        raise ValueError(f"checkpoint {path} is missing tensor {missing[0]!r} (and {len(missing) - 1} more)")
    for k, v in weights.items():
        if k not in want:
            raise ValueError(f"checkpoint {path} has unexpected tensor {k!r}")
        if tuple(v.shape) != tuple(want[k].shape):
            raise ValueError(f"checkpoint {path}: tensor {k!r} has shape {tuple(v.shape)}, "
                             f"the config expects {tuple(want[k].shape)}")
    net.load_state_dict(weights)
    calib = {k[len(CALIB_PREFIX):]: v for k, v in tensors.items() if k.startswith(CALIB_PREFIX)}
    return net, calib, json.loads(meta.get("extra", "{}")), file_hash(path)
