"""KV storage with StreamingLLM/LongLive policy: `sink` first frames forever + a ring of `window` frames.

Compression happens on write (quantize the appended frame); scales are per (batch, head, frame) so a
frame is quantized once and never touched again. kv_bytes() counts every byte actually allocated.
`write_at` / `attend_at` take the slot and frame as device tensors (no host value in the launch), so a
CUDA graph can record them once and replay them every frame.
"""

from __future__ import annotations

import torch

from worldlab.kernels import fp8, nvfp4
from worldlab.kernels.dispatch import implementation
from worldlab.kernels.errors import check_finite, check_float
from worldlab.kernels.nvfp4 import reference as nvfp4_ref
from worldlab.kernels.nvfp4.format import BLOCK, PER_TENSOR_DIVISOR, e4m3_lut

KINDS = ("none", "fp8", "nvfp4")


def alibi_ages(q_frames: torch.Tensor, k_frames: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """Frame age used for the ALiBi bias; sink frames sit right before the window once the stream is long."""
    age = q_frames - k_frames
    sink_age = torch.minimum(age, sink + window - 1 - k_frames)
    return torch.where(k_frames < sink, sink_age, age)


class KVCache:
    """Per-layer cache for (B, H, T, D) frame blocks; T tokens per frame, D a multiple of 16."""

    def __init__(self, kind: str, *, batch: int, heads: int, head_dim: int, tokens_per_frame: int,
                 sink: int, window: int, device="cpu", dtype=torch.float32):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        for name, v, lo in (("batch", batch, 1), ("heads", heads, 1), ("head_dim", head_dim, 16),
                            ("tokens_per_frame", tokens_per_frame, 1), ("sink", sink, 0), ("window", window, 1)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if head_dim % BLOCK:
            raise ValueError(f"head_dim must be a multiple of {BLOCK}, got {head_dim}")
        self.kind, self.B, self.H, self.D, self.T = kind, batch, heads, head_dim, tokens_per_frame
        self.sink, self.window = sink, window
        self.n_slots = sink + window
        self.device = torch.device(device)
        self.dtype = dtype
        shape = (batch, heads, self.n_slots, tokens_per_frame)
        self.frame_id = torch.full((self.n_slots,), -1, dtype=torch.int64, device=self.device)
        self.store = {}
        for name in ("k", "v"):
            if kind == "none":
                self.store[name] = (torch.zeros(*shape, head_dim, dtype=dtype, device=self.device),)
            elif kind == "fp8":
                self.store[name] = (torch.zeros(*shape, head_dim, dtype=torch.uint8, device=self.device),
                                    torch.ones(shape[:3], dtype=torch.float32, device=self.device))
            else:
                self.store[name] = (torch.zeros(*shape, head_dim // 2, dtype=torch.uint8, device=self.device),
                                    torch.full((*shape, head_dim // BLOCK), 0x08, dtype=torch.uint8, device=self.device),
                                    torch.ones(shape[:3], dtype=torch.float32, device=self.device))
        self.last_frame = -1

    # -- writing -------------------------------------------------------------------------------
    def slot_for(self, frame: int) -> int:
        return frame if frame < self.sink else self.sink + (frame - self.sink) % self.window

    def append_frame(self, k: torch.Tensor, v: torch.Tensor, frame_id: int | None = None) -> int:
        """Store one frame block k, v: (B, H, T, D); returns the slot written. Frame ids must increase."""
        expected = (self.B, self.H, self.T, self.D)
        for name, t in (("k", k), ("v", v)):
            check_float(name, t, min_dim=4)
            if tuple(t.shape) != expected:
                raise ValueError(f"{name} must have shape {expected} (B, H, T, D), got {tuple(t.shape)}")
            check_finite(name, t)
        frame = self.last_frame + 1 if frame_id is None else int(frame_id)
        if frame <= self.last_frame:
            raise ValueError(f"frame_id must increase: got {frame} after {self.last_frame}")
        slot = self.slot_for(frame)
        for name, t in (("k", k), ("v", v)):
            self._write(self.store[name], slot, t.detach())
        self.frame_id[slot] = frame
        self.last_frame = frame
        return slot

    def write_at(self, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor, frame: torch.Tensor) -> None:
        """Store one frame block at `slot` as frame `frame` (both (1,) int64 on the cache's device). Unchecked
        and without host bookkeeping: the caller (the model's graph-safe step) validated the stream and moves
        `last_frame` itself with `note_frame`."""
        for name, t in (("k", k), ("v", v)):
            self._write(self.store[name], slot, t.detach())
        self.frame_id.index_copy_(0, slot, frame)

    def note_frame(self, frame: int) -> None:
        self.last_frame = int(frame)

    def _write(self, buf, slot, x: torch.Tensor) -> None:
        """slot: an int, or a (1,) int64 device tensor (written with index_copy_, graph-safe)."""
        x = x.to(self.device, torch.float32)
        if self.kind == "none":
            self._put(buf[0], slot, x.to(self.dtype))
            return
        # One scale per head per frame, written through the dispatched quantizers (Triton on CUDA).
        if self.kind == "fp8":  # per-row FP8 over the frame's T*D values is exactly that scale
            q = fp8.quantize(x.reshape(self.B, self.H, self.T * self.D))
            self._put(buf[0], slot, q.data.view(torch.uint8).reshape(x.shape))
            self._put(buf[1], slot, q.scale[..., 0])
            return
        amax = x.abs().amax(dim=(-2, -1))  # (B, H)
        pts = torch.where(amax > 0, amax / PER_TENSOR_DIVISOR, torch.ones_like(amax))
        packed, scales = nvfp4.quantize_rows(x, pts[..., None])
        self._put(buf[0], slot, packed)
        self._put(buf[1], slot, scales)
        self._put(buf[2], slot, pts)

    @staticmethod
    def _put(dst: torch.Tensor, slot, value: torch.Tensor) -> None:
        if isinstance(slot, torch.Tensor):
            dst.index_copy_(2, slot, value.unsqueeze(2))
        else:
            dst[:, :, slot] = value

    # -- reading -------------------------------------------------------------------------------
    def frame_ids(self) -> list[int]:
        """Ids of the stored frames, oldest first."""
        return sorted(int(f) for f in self.frame_id.tolist() if f >= 0)

    def decoded(self, name: str) -> torch.Tensor:
        """(B, H, n_slots, T, D) fp32 decode of one side; the reference path and tests use it."""
        buf = self.store[name]
        if self.kind == "none":
            return buf[0].to(torch.float32)
        if self.kind == "fp8":
            return e4m3_lut(self.device)[buf[0].long()] * buf[1][..., None, None]
        return nvfp4_ref.dequantize(buf[0], buf[1], buf[2][..., None, None])

    def slot_bias(self, q_frame, slopes: torch.Tensor | None) -> torch.Tensor:
        """(H, n_slots) additive bias: -slope * age, -inf for empty slots; q_frame an int or a (1,) tensor."""
        valid = self.frame_id >= 0
        bias = torch.zeros((self.H, self.n_slots), dtype=torch.float32, device=self.device)
        if slopes is not None:
            qf = q_frame.reshape(()) if isinstance(q_frame, torch.Tensor) else torch.tensor(q_frame, device=self.device)
            age = alibi_ages(qf, self.frame_id, self.sink, self.window)
            bias = -slopes.to(self.device, torch.float32)[:, None] * age.to(torch.float32)[None, :]
        return bias.masked_fill(~valid[None, :], float("-inf"))

    def attend(self, q: torch.Tensor, q_frame: int | None = None, slopes: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q k^T / sqrt(D) - slope * age) v over every cached frame; q: (B, H, Tq, D)."""
        check_float("q", q, min_dim=4)
        if q.shape[0] != self.B or q.shape[1] != self.H or q.shape[3] != self.D:
            raise ValueError(f"q must have shape ({self.B}, {self.H}, Tq, {self.D}), got {tuple(q.shape)}")
        if self.last_frame < 0:
            raise ValueError("attend on an empty cache: append a frame first")
        if slopes is not None and tuple(slopes.shape) != (self.H,):
            raise ValueError(f"slopes must have shape ({self.H},), got {tuple(slopes.shape)}")
        q_frame = self.last_frame if q_frame is None else int(q_frame)
        return implementation("kv_cache", q).attend(self, q.to(torch.float32), q_frame, slopes)

    def attend_at(self, q: torch.Tensor, q_frame: torch.Tensor, slopes: torch.Tensor | None) -> torch.Tensor:
        """attend() for the graph-safe step: q_frame a (1,) int64 device tensor, no checks (see write_at)."""
        return implementation("kv_cache", q).attend(self, q.to(torch.float32), q_frame, slopes)

    # -- bookkeeping ---------------------------------------------------------------------------
    def reset(self) -> None:
        self.frame_id.fill_(-1)
        self.last_frame = -1

    def kv_bytes(self) -> int:
        """Bytes allocated for K and V (codes, scales, per-frame scales) plus the frame index."""
        n = self.frame_id.numel() * self.frame_id.element_size()
        for buf in self.store.values():
            n += sum(t.numel() * t.element_size() for t in buf)
        return n

    def elements(self) -> int:
        return 2 * self.B * self.H * self.n_slots * self.T * self.D


def make_kv_cache(kind: str, **kwargs) -> KVCache:
    return KVCache(kind, **kwargs)
