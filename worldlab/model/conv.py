"""ConvWorldModel: an all-convolutional world model with no KV cache (a second, plug-in model; docs/byom.md).

State = the class maps of the last two frames + the prompt's theme; each step a conv trunk at 32x32 picks,
for every pixel, one of 25 source offsets (+-2 px) in the newest frame or a new class (an advection head).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldlab import env
from worldlab.config import CHECKPOINT_DIR, Toggles
from worldlab.model.sprites import N_CLASSES, all_palettes

SHIPPED = CHECKPOINT_DIR / "conv.safetensors"
REACH = 2  # px a source offset may reach: the fastest thing in the world moves 2 px a frame
OFFSETS = tuple((dy, dx) for dy in range(-REACH, REACH + 1) for dx in range(-REACH, REACH + 1))
N_OUT = len(OFFSETS) + N_CLASSES  # per-pixel logits: copy from an offset, or draw a class anew
SUPPORTS = {"weights": ("fp32",), "window": ("short",), "kv": ("none",)}  # no quantizer, window or cache


@dataclass(frozen=True)
class ConvConfig:
    """Sizes of the conv world model (saved in its checkpoint's metadata)."""

    channels: int = 48  # trunk width at 32x32
    dilations: tuple = (1, 2, 4, 8, 1)  # residual 3x3 convs: receptive field covers the frame
    head_channels: int = 16  # per-pixel features after depth-to-space back to 64x64

    def __post_init__(self):
        object.__setattr__(self, "dilations", tuple(self.dilations))  # JSON round-trips give lists


def frame_classes(frames: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., H, W) long: the class of the nearest of every theme's colours (all 24 are
    distinct, so env frames map exactly, and frames drawn before a prompt switch still map right)."""
    pal = all_palettes()  # (24, 3): colour i has class i % 6 (env.palette order)
    f = torch.as_tensor(np.asarray(frames)).to(torch.float32)
    return (pal.square().sum(-1) - 2.0 * f @ pal.T).argmin(-1) % N_CLASSES  # |x - c|^2 - |x|^2


def shifted(cur: torch.Tensor) -> torch.Tensor:
    """(B, H, W) classes -> (B, 25, H, W): channel k holds the source pixel at OFFSETS[k] (edges replicate)."""
    H, W = cur.shape[-2:]
    pad = F.pad(cur[:, None].float(), (REACH,) * 4, mode="replicate")[:, 0].long()  # (B, H+4, W+4)
    return torch.stack([pad[:, REACH + dy:REACH + dy + H, REACH + dx:REACH + dx + W] for dy, dx in OFFSETS], 1)


class ConvNet(nn.Module):
    """[x_{t-1}, x_t, position, action] -> per-pixel logits over 25 copy offsets + 6 new classes."""

    def __init__(self, cfg: ConvConfig = ConvConfig(), size: int = env.SIZE):
        super().__init__()
        self.cfg = cfg
        c, cin = cfg.channels, 2 * N_CLASSES + 2
        self.inp = nn.Conv2d(4 * cin + 2, c, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(c, c, 3, padding=d, dilation=d) for d in cfg.dilations)
        self.up = nn.Conv2d(c, 4 * cfg.head_channels, 1)
        self.head = nn.Conv2d(cfg.head_channels + cin, N_OUT, 3, padding=1)
        lin = torch.linspace(-1, 1, size)
        self.register_buffer("coords", torch.stack(torch.meshgrid(lin, lin, indexing="ij")), persistent=False)

    def forward(self, prev: torch.Tensor, cur: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """prev, cur (B, H, W) long; delta (B, 2) float action (dx, dy) -> logits (B, N_OUT, H, W)."""
        B, H, W = cur.shape
        x = torch.cat([F.one_hot(prev, N_CLASSES), F.one_hot(cur, N_CLASSES)], -1).permute(0, 3, 1, 2).float()
        x = torch.cat([x, self.coords.expand(B, -1, -1, -1)], 1)  # (B, 14, H, W)
        act = delta[:, :, None, None].expand(-1, -1, H // 2, W // 2)
        h = F.relu(self.inp(torch.cat([F.pixel_unshuffle(x, 2), act], 1)))  # (B, C, H/2, W/2)
        for conv in self.blocks:
            h = h + conv(F.relu(h))
        up = F.pixel_shuffle(self.up(F.relu(h)), 2)  # (B, head_channels, H, W)
        return self.head(torch.cat([F.relu(up), x], 1))


def target_log_prob(logits: torch.Tensor, cur: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p(target class) per pixel, (B, H, W): the offsets whose source pixel in `cur` holds the target class
    plus the target's own new-class logit (the training loss; next_classes is its argmax at inference)."""
    logp = logits.log_softmax(1)
    hit = shifted(cur) == target[:, None]  # (B, 25, H, W)
    copy = logp[:, :len(OFFSETS)].masked_fill(~hit, float("-inf"))
    new = logp[:, len(OFFSETS):].gather(1, target[:, None])  # (B, 1, H, W)
    return torch.logsumexp(torch.cat([copy, new], 1), 1)


def next_classes(logits: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """The most likely class per pixel, (B, H, W) long, under the mixture target_log_prob scores (summed here
    in probability space: the same argmax, cheaper)."""
    p = logits.softmax(1)
    out = p[:, len(OFFSETS):].clone()  # (B, 6, H, W)
    return out.scatter_add_(1, shifted(cur), p[:, :len(OFFSETS)]).argmax(1)


@dataclass
class ConvState:
    prompt: str
    theme: str
    prev: torch.Tensor | None = None  # (H, W) long class map of x_{t-1}
    cur: torch.Tensor | None = None  # (H, W) long class map of x_t


class ConvWorldModel:
    """The WorldModel protocol over ConvNet; build with `conv(...)` or `resolve("conv").build()`."""

    def __init__(self, net: ConvNet, *, device: str = "cpu", checkpoint_hash: str = "", checkpoint_path=None):
        self.network, self.device = net.to(device).eval(), torch.device(device)
        self.frame_shape = (env.SIZE, env.SIZE, 3)
        self.checkpoint_hash = checkpoint_hash
        self.checkpoint_path = checkpoint_path  # the file it came from (provenance records hash it)
        self._palettes = {t: torch.from_numpy(env.palette(t)).to(self.device) for t in env.THEMES}

    def describe(self) -> dict:
        return {"model": "conv", "weights": "fp32", "kv": "none", "window": "short",
                "channels": self.network.cfg.channels, "checkpoint": self.checkpoint_hash}

    def init_state(self, prompt: str) -> ConvState:
        return ConvState(prompt=prompt, theme=env.theme_for_prompt(prompt))

    def prefill(self, state: ConvState, frames: np.ndarray, actions: Sequence) -> None:
        """Only the last two of the T context frames matter (the model has no longer memory)."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != self.frame_shape or len(frames) < 2:
            raise ValueError(f"frames must be uint8 (T >= 2, {self.frame_shape}), got {frames.dtype} {frames.shape}")
        if len(actions) != len(frames) - 1:
            raise ValueError(f"prefill needs len(actions) == len(frames) - 1, got {len(actions)} and {len(frames)}")
        for a in actions:
            env.normalize_keys(a)
        state.prev, state.cur = frame_classes(frames[-2:]).to(self.device)

    @torch.inference_mode()
    def step(self, states: Sequence[ConvState], actions: Sequence) -> np.ndarray:
        if len(states) != len(actions):
            raise ValueError(f"step got {len(states)} states but {len(actions)} actions")
        if not states:
            return np.zeros((0, *self.frame_shape), np.uint8)
        if any(s.cur is None for s in states):
            raise ValueError("step before prefill: call prefill (or start_session) first")
        delta = torch.tensor([env.action_delta(a) for a in actions], dtype=torch.float32, device=self.device)
        prev, cur = torch.stack([s.prev for s in states]), torch.stack([s.cur for s in states])  # (B, H, W)
        nxt = next_classes(self.network(prev, cur, delta), cur)  # (B, H, W)
        for i, s in enumerate(states):
            s.prev, s.cur = s.cur, nxt[i].clone()  # not a view: a state must not pin its batch-mates' maps
        return torch.stack([self._palettes[s.theme][nxt[i]] for i, s in enumerate(states)]).cpu().numpy()

    def recache(self, state: ConvState, prompt: str) -> None:
        """Prompt switch: the state is class maps, so a new theme is only a new palette (exact, no compute)."""
        state.prompt, state.theme = prompt, env.theme_for_prompt(prompt)

    def reset(self, state: ConvState) -> None:
        state.prev = state.cur = None

    def kv_bytes(self, state: ConvState) -> int:
        return 0


def save(path, net: ConvNet, extra: dict | None = None) -> str:
    """Write a checkpoint (weights + config in the metadata); returns its short hash."""
    from safetensors.torch import save_file

    from worldlab.model.checkpoint import file_hash

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    # One metadata key: safetensors writes several in a per-process random order, and the hash must not vary.
    meta = {"conv": json.dumps({"config": asdict(net.cfg), "extra": extra or {}})}
    save_file(tensors, str(path), metadata=meta)
    return file_hash(path)


def load(path=None, device: str = "cpu") -> ConvWorldModel:
    """A ConvWorldModel from a checkpoint (None: the shipped one); ValueError/FileNotFoundError in one line."""
    from worldlab.model.checkpoint import file_hash, read_file
    from worldlab.model.registry import refuse_part

    path = pathlib.Path(path) if path is not None else SHIPPED
    meta, tensors = read_file(path)
    refuse_part(path, meta, "a conv model")
    if "conv" not in meta and ("worldlab" in meta or "config" in meta):
        raise ValueError(f"checkpoint {path} holds a tiny transformer, not a conv model: use --model tiny "
                         f"--checkpoint {path} (or --model {path})")
    if "conv" not in meta:
        raise ValueError(f"checkpoint {path} is not a conv model checkpoint (no conv entry in its metadata)")
    net = ConvNet(ConvConfig(**json.loads(meta["conv"])["config"]))
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit its config: {str(exc).splitlines()[0]}") from None
    return ConvWorldModel(net, device=device, checkpoint_hash=file_hash(path), checkpoint_path=path)


def conv(*, toggles: Toggles | None = None, device: str = "cpu", checkpoint=None) -> ConvWorldModel:
    """All-convolutional, no KV cache: the last two frames -> the next (advection head; docs/byom.md)."""
    toggles = toggles or Toggles()
    for name, allowed in SUPPORTS.items():
        if getattr(toggles, name) not in allowed:  # the registry checks first; this guards direct calls
            raise ValueError(f"model 'conv' does not support {name}={getattr(toggles, name)!r} "
                             f"(it supports {name}: {', '.join(allowed)})")
    return load(checkpoint, device)


conv.supports = SUPPORTS
conv.default_checkpoint = SHIPPED
