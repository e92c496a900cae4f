"""Invisible provenance watermark: a 64-bit session id spread over every streamed frame's luma, and its detector.

Embedding adds a static, key-seeded ±AMPLITUDE_RGB pattern to the upscaled frame before it is encoded; detection
correlates a decoded clip's frames with it and reports an id only when the CRC and the signal strength agree.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np

from worldlab.config import SessionConfig

ID_BITS = 64
CRC_BITS = 16
CODE_BITS = ID_BITS + CRC_BITS  # what is embedded: the id, then CRC-16/CCITT of its 8 bytes
# The frame is a GRID x GRID array of cells whatever its size: 8 px cells at 128, 16 px at 256. Bigger cells
# put the mark in bigger transform coefficients that survive x264's re-encode (at 32 it lost 2-5 bits a clip).
GRID = 16
# The change per colour channel, leaning on green as luma does: mean squared change 14/3 -> 41.4 dB PSNR
# (40 dB allows 6.5) for 2.12 levels of luma, 23 % more than ±2 on every channel (1.72 levels, 42.1 dB).
AMPLITUDE_RGB = (2, 3, 1)
BT601_LUMA = (0.257, 0.504, 0.098)  # limited range (Y = 16 + ...): what a decoder's Y plane holds
LUMA_AMPLITUDE = float(np.dot(AMPLITUDE_RGB, BT601_LUMA))
# A cell whose response is far above what the watermark alone can make holds a content edge: erase it.
ERASE_AT = 3.0 * LUMA_AMPLITUDE
MAX_SPREAD = 2.0  # luma std within a cell half above which the half is not flat (codec noise stays under it)
SIGMA_FLOOR = 0.05  # luma: an uncompressed clean clip has no noise at all, and 0 / 0 must not look like a mark
MIN_MEAN_Z = 2.0  # mean |z| over the coded bits below this = no watermark (clean clips measured <= 0.8)
# Soft-decision (Chase) correction: if the CRC fails, flip up to CHASE_FLIPS of the CHASE_BITS least reliable
# bits (176 candidates: a clean clip passes a CRC-16 by chance with p ~ 0.3 %, and must also pass MIN_MEAN_Z).
CHASE_BITS, CHASE_FLIPS = 10, 3
_FLIPS = [c for k in range(CHASE_FLIPS + 1) for c in itertools.combinations(range(CHASE_BITS), k)]


@dataclass(frozen=True)
class Detection:
    found: bool
    watermark_id: int | None  # the id, when found
    raw_id: int  # the 64 bits as read, whether or not they pass the checks (for bit-accuracy figures)
    bit_confidence: float  # mean over coded bits of the estimated probability that the bit is right (0.5..1)
    mean_z: float  # mean |z| of the coded bits' soft values
    frames: int
    corrected: int = 0  # bits the CRC search flipped

    @property
    def hex_id(self) -> str | None:
        return None if self.watermark_id is None else format_id(self.watermark_id)


def _cell(size: int) -> int:
    """Cell side in pixels for a frame side: even, so both halves of a cell have the same area."""
    return size // GRID // 2 * 2


def format_id(wm_id: int) -> str:
    return f"{wm_id:016x}"


def _code_bits(wm_id: int) -> np.ndarray:
    """(CODE_BITS,) of 0/1: the id big-endian, then its CRC-16."""
    if not 0 <= wm_id < 1 << ID_BITS:
        raise ValueError(f"watermark id must be a 64-bit unsigned integer, got {wm_id}")
    raw = wm_id.to_bytes(8, "big")
    word = raw + binascii.crc_hqx(raw, 0xFFFF).to_bytes(2, "big")
    return np.unpackbits(np.frombuffer(word, np.uint8))


class Watermark:
    """The key-seeded layout shared by embedder and detector: per cell a chip (±1), a bit index and whether
    the cell's zero-mean basis splits it left/right or top/bottom."""

    def __init__(self, key: str | bytes = SessionConfig.watermark_key):
        seed = hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()
        rng = np.random.default_rng(np.frombuffer(seed, np.uint64))
        n = GRID * GRID
        self.chip = rng.choice(np.array([-1, 1], np.int8), size=n)  # (GRID*GRID,)
        self.bit_of = rng.permutation(n) % CODE_BITS  # every bit gets n / CODE_BITS cells
        self.vertical = rng.random(n) < 0.5  # True: top half +, bottom half -
        self._patterns: dict[tuple, np.ndarray] = {}

    # -- embedding -----------------------------------------------------------------------------
    def pattern(self, wm_id: int, height: int, width: int) -> np.ndarray:
        """(height, width, 3) int16 of 0 / ±AMPLITUDE_RGB: what embed adds to a frame."""
        cache_key = (wm_id, height, width)
        if cache_key not in self._patterns:
            self._patterns[cache_key] = self._build(wm_id, height, width)
        return self._patterns[cache_key]

    def _build(self, wm_id: int, height: int, width: int) -> np.ndarray:
        ch, cw = _cell(height), _cell(width)
        if ch < 2 or cw < 2:
            raise ValueError(f"frame {height}x{width} is too small for a {GRID}x{GRID} watermark grid")
        signs = (self.chip * (2 * _code_bits(wm_id)[self.bit_of].astype(np.int8) - 1)).reshape(GRID, GRID)
        half_y = np.where(np.arange(ch) < ch // 2, 1, -1)  # (ch,)
        half_x = np.where(np.arange(cw) < cw // 2, 1, -1)  # (cw,)
        vert = self.vertical.reshape(GRID, GRID, 1, 1)
        basis = np.where(vert, half_y[:, None] * np.ones(cw, int), np.ones(ch, int)[:, None] * half_x)  # (G, G, ch, cw)
        cells = signs[:, :, None, None] * basis  # (G, G, ch, cw)
        out = np.zeros((height, width, 3), np.int16)
        plane = cells.transpose(0, 2, 1, 3).reshape(GRID * ch, GRID * cw, 1)
        out[:GRID * ch, :GRID * cw] = plane * np.array(AMPLITUDE_RGB, np.int16)
        return out

    def embed(self, rgb: np.ndarray, wm_id: int) -> np.ndarray:
        """(H, W, 3) uint8 -> the same frame with the id's pattern added (a new array)."""
        p = self.pattern(wm_id, rgb.shape[0], rgb.shape[1])
        out = rgb.astype(np.int16)
        out += p
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)

    # -- detection -----------------------------------------------------------------------------
    def responses(self, luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) luma -> per cell (GRID*GRID,): the mean of luma x basis (± the luma amplitude on flat
        content), and whether the cell is usable: each half flat and the response no bigger than a mark's."""
        ch, cw = _cell(luma.shape[0]), _cell(luma.shape[1])
        y = luma[:GRID * ch, :GRID * cw].astype(np.float32).reshape(GRID, ch, GRID, cw).transpose(0, 2, 1, 3)
        vert = self.vertical.reshape(GRID, GRID, 1, 1)
        plus = np.where(vert, y[:, :, :ch // 2].reshape(GRID, GRID, 1, -1),  # (G, G, 1, ch*cw/2)
                        y[:, :, :, :cw // 2].reshape(GRID, GRID, 1, -1))
        minus = np.where(vert, y[:, :, ch // 2:].reshape(GRID, GRID, 1, -1),
                         y[:, :, :, cw // 2:].reshape(GRID, GRID, 1, -1))
        r = (plus.mean(-1) - minus.mean(-1)).reshape(-1) / 2
        spread = np.maximum(plus.std(-1), minus.std(-1)).reshape(-1)
        # A content edge inside a cell adds to its response whatever the mark: such cells are left out.
        usable = (spread <= MAX_SPREAD) & (np.abs(r) <= ERASE_AT)
        return r, usable

    def detect(self, lumas) -> Detection:
        """Correlate every frame of a clip (iterable of (H, W) luma arrays) with the layout; soft decisions."""
        total = np.zeros(GRID * GRID)
        count = np.zeros(GRID * GRID)
        frames = 0
        for luma in lumas:
            r, usable = self.responses(luma)
            total += np.where(usable, r, 0.0)
            count += usable
            frames += 1
        return self._decide(total, count, frames)

    def _decide(self, total: np.ndarray, count: np.ndarray, frames: int) -> Detection:
        valid = count > 0
        soft_cell = np.where(valid, total / np.maximum(count, 1), 0.0) * self.chip  # (cells,)
        n = np.bincount(self.bit_of, weights=valid, minlength=CODE_BITS)  # valid cells per bit
        soft = np.bincount(self.bit_of, weights=soft_cell, minlength=CODE_BITS) / np.maximum(n, 1)
        resid = np.where(valid, soft_cell - soft[self.bit_of], 0.0)
        dof = max(1.0, valid.sum() - CODE_BITS)
        sigma = max(math.sqrt(float((resid ** 2).sum()) / dof), SIGMA_FLOOR)
        z = soft * np.sqrt(n) / sigma
        mean_z = float(np.abs(z).mean())
        confidence = float(np.mean([0.5 * (1 + math.erf(abs(v) / math.sqrt(2))) for v in z]))  # Φ(|z|)
        bits = (soft > 0).astype(np.uint8)
        raw_id = int.from_bytes(np.packbits(bits[:ID_BITS]).tobytes(), "big")
        if not (frames and (n > 0).all() and mean_z >= MIN_MEAN_Z):
            return Detection(False, None, raw_id, confidence, mean_z, frames)
        word, flips = _crc_search(bits, np.argsort(np.abs(z))[:CHASE_BITS])
        wm_id = None if word is None else int.from_bytes(word[:8], "big")
        return Detection(word is not None, wm_id, raw_id, confidence, mean_z, frames, flips)


def _crc_search(bits: np.ndarray, weakest: np.ndarray) -> tuple[bytes | None, int]:
    """The first code word (fewest flips of the `weakest` bits) whose CRC matches, and its flip count."""
    for flips in _FLIPS:
        cand = bits.copy()
        cand[weakest[list(flips)]] ^= 1
        word = np.packbits(cand).tobytes()
        if binascii.crc_hqx(word[:8], 0xFFFF) == int.from_bytes(word[8:], "big"):
            return word, len(flips)
    return None, 0


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32 BT.601 limited-range luma, as a decoder's Y plane holds it."""
    return 16 + rgb.astype(np.float32) @ np.array(BT601_LUMA, np.float32)


class Embedder:
    """One session's watermark: call it on each upscaled frame before encoding."""

    def __init__(self, wm_id: int, key: str | bytes = SessionConfig.watermark_key):
        _code_bits(wm_id)  # validates the id now rather than on the first frame
        self.id = wm_id
        self.mark = Watermark(key)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.mark.embed(rgb, self.id)
