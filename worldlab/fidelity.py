"""Frame-quality metrics for any world: pooled PSNR, SSIM, sharpness, horizontal shift (turn agreement),
persistence, exact share, colour-histogram distance, bootstrap intervals over seeds and trivial baselines.

Frames are uint8 RGB, one frame (H, W, 3) or a sequence (T, H, W, 3), of any size (64x64 sprites, 48x64 DOOM).
Nothing here knows a world: the world's evaluation passes its frames, its keys' turn signs and its mean frame.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

PSNR_CAP = 100.0  # pooled PSNR of an exact result (JSON has no infinity); also the ceiling of any pooled figure
PEAK = 255.0
LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601: the luminance every shift/sharpness figure is taken on

# Sharpness-ratio floor of `is_sharp`, set between two references (measured: tests/test_fidelity.py, and the
# DOOM probe frames of ../shared/evidence). The previous true frame under a 3x3 box blur scores 0.08-0.14 (a
# straight edge keeps 1/9 of its Laplacian energy, texture less); a light perturbation (re-quantisation, +-2
# noise) scores >= 1. 0.4 is near their geometric middle (~0.35): a mild decoder softening (0.5-0.7) passes,
# a blur as strong as the box fails.
SHARP_MIN = 0.4
# Laplacian energy (grey levels^2) added to both sides of the ratio: about what uint8 rounding alone gives, so
# a flat or perfectly smooth truth (nothing to blur) yields ~1 for any equally featureless prediction, not 0/0.
SHARP_EPS = 1.0
MIN_TURN_PX = 0.5  # a shift below half a pixel is estimator noise, not a turn (for or against the keys)
PERSIST_THRESH = 24  # grey levels: above rounding and lighting flicker, below a sprite's/monster's contrast
CI_LEVEL = 0.95


# -- PSNR ----------------------------------------------------------------------------------------------
def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _db(m: float) -> float:
    return float("inf") if m == 0 else float(10 * np.log10(PEAK**2 / m))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Per-frame PSNR in dB; inf for identical frames."""
    return _db(mse(a, b))


def capped_psnr(mse):
    """PSNR of each MSE (array or DataArray), exact ones (MSE 0) at PSNR_CAP so the result stays finite."""
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(PEAK**2 / mse), PSNR_CAP)


def pooled_psnr(mses) -> float:
    """PSNR of the mean MSE over everything given. Exact (mean 0) -> PSNR_CAP; never above it, so a
    near-exact result cannot out-score an exact one."""
    m = np.asarray(mses, dtype=np.float64)
    if m.size == 0:
        raise ValueError("pooled_psnr needs at least one MSE")
    return float(capped_psnr(m.mean()))


# -- SSIM ----------------------------------------------------------------------------------------------
_G = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
_G = _G / _G.sum()  # the 11-tap, sigma 1.5 Gaussian; the 11x11 window is its outer product


@lru_cache(maxsize=8)
def _band(n: int) -> torch.Tensor:
    """(n, n - 10): column j holds the Gaussian over input rows j..j + 10 ("valid" filtering as a matmul)."""
    m = torch.zeros(n, n - len(_G) + 1, dtype=torch.float64)
    for j in range(m.shape[1]):
        m[j:j + len(_G), j] = _G
    return m


def _window_mean(t: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., H - 10, W - 10) Gaussian-weighted local means: the separable 11x11 window as two
    band-matrix products (10x faster on CPU than a float64 convolution)."""
    return _band(t.shape[-2]).T @ t @ _band(t.shape[-1])


def _nchw(frames: np.ndarray) -> torch.Tensor:
    f = np.asarray(frames)
    return torch.from_numpy(f.reshape(-1, *f.shape[-3:])).permute(0, 3, 1, 2).double()  # (T, 3, H, W)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, 11x11 Gaussian, sigma 1.5) averaged over RGB channels and frames."""
    return float(ssim_per_frame(a, b).mean())


def ssim_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T,) SSIM of each frame pair (one batched convolution); a single (H, W, 3) pair gives (1,)."""
    if a.shape != b.shape or min(a.shape[-3:-1]) < len(_G):
        raise ValueError(f"ssim needs two equal shapes of at least 11x11 pixels, got {a.shape} and {b.shape}")
    x, y = _nchw(a), _nchw(b)  # (T, 3, H, W)
    mu_x, mu_y = _window_mean(x), _window_mean(y)
    sxx = _window_mean(x * x) - mu_x**2
    syy = _window_mean(y * y) - mu_y**2
    sxy = _window_mean(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean((1, 2, 3)).numpy()


# -- sharpness -----------------------------------------------------------------------------------------
def luminance(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., H, W) float64 in grey levels 0..255."""
    return np.asarray(frames, dtype=np.float64) @ LUMA


def sharpness(frames: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of the luminance over interior pixels (no padding, so the frame's
    border adds no false edge): the high-frequency energy a blur removes."""
    y = luminance(frames)
    lap = (4 * y[..., 1:-1, 1:-1] - y[..., :-2, 1:-1] - y[..., 2:, 1:-1]
           - y[..., 1:-1, :-2] - y[..., 1:-1, 2:])
    return float(np.mean(lap**2))


def sharpness_ratio(pred: np.ndarray, truth: np.ndarray) -> float:
    """(sharpness(pred) + SHARP_EPS) / (sharpness(truth) + SHARP_EPS): < 1 lost detail, > 1 added some.
    A flat truth gives no defined ratio without the floor; with it, a flat prediction of a flat frame is ~1."""
    return (sharpness(pred) + SHARP_EPS) / (sharpness(truth) + SHARP_EPS)


def is_sharp(pred: np.ndarray, truth: np.ndarray) -> bool:
    """One-sided: blur fails; added detail passes here (PSNR and SSIM judge whether it is the right detail)."""
    return sharpness_ratio(pred, truth) >= SHARP_MIN


def box_blur(frames: np.ndarray) -> np.ndarray:
    """3x3 box filter per channel (edges replicated), rounded back to uint8: the blurred reference."""
    f = np.asarray(frames, dtype=np.float64)
    h, w = f.shape[-3:-1]
    pad = np.pad(f, [(0, 0)] * (f.ndim - 3) + [(1, 1), (1, 1), (0, 0)], mode="edge")
    out = sum(pad[..., dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)) / 9
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# -- horizontal shift and turn agreement ---------------------------------------------------------------
def horizontal_shift(a: np.ndarray, b: np.ndarray, subpixel: bool = True) -> float:
    """Signed horizontal shift (px) of the content from frame `a` to frame `b`, by phase correlation of the
    Hann-windowed luminance: POSITIVE = the picture content moved RIGHT (b(x) ~ a(x - s)).
    In DOOM, turning LEFT swings the view counter-clockwise, so the scene slides RIGHT: a left turn is a
    positive shift, a right turn a negative one (see TURN_SIGN). Identical or featureless frames give 0."""
    ya, yb = luminance(a), luminance(b)
    h, w = ya.shape
    win = np.outer(np.hanning(h), np.hanning(w))  # no wrap-around edge dominates the spectrum
    fa, fb = np.fft.fft2((ya - ya.mean()) * win), np.fft.fft2((yb - yb.mean()) * win)
    cross = fb * np.conj(fa)
    mag = np.abs(cross)
    r = np.fft.ifft2(np.divide(cross, mag, out=np.zeros_like(cross), where=mag > 1e-9 * (mag.max() + 1e-300))).real
    if not np.any(r):
        return 0.0
    py, px = np.unravel_index(int(np.argmax(r)), r.shape)
    shift = px - w if px > w // 2 else px
    if subpixel:  # vertex of the parabola through the peak and its two horizontal neighbours
        left, mid, right = r[py, (px - 1) % w], r[py, px], r[py, (px + 1) % w]
        denom = left - 2 * mid + right
        shift += 0.5 * (left - right) / denom if denom < 0 else 0.0
    return round(float(shift), 3)  # beyond 1/1000 px it is float noise (identical frames give exactly 0)


TURN_SIGN = {"left": 1, "right": -1}  # the content-shift sign each turn key asks for (DOOM's view)


def turn_signs(actions) -> list[int]:
    """Per transition: +1 (left held), -1 (right held), 0 (neither or both: no turn asked for)."""
    return [sum(TURN_SIGN[k] for k in set(keys) & TURN_SIGN.keys()) for keys in actions]


def turn_agreement(frames: np.ndarray, signs) -> float:
    """Share of turning transitions (sign != 0; signs[i] is for frames[i] -> frames[i + 1]) whose content
    shift has that sign by at least MIN_TURN_PX; a frozen view disagrees. nan when no transition turns."""
    if len(signs) != len(frames) - 1:
        raise ValueError(f"turn_agreement needs one sign per transition: {len(frames)} frames, {len(signs)} signs")
    agree = [np.sign(s) * horizontal_shift(frames[i], frames[i + 1]) >= MIN_TURN_PX
             for i, s in enumerate(signs) if s != 0]
    return float(np.mean(agree)) if agree else float("nan")


# -- persistence, exact frames, colour statistics ------------------------------------------------------
def persistence_mask(truth: np.ndarray, mean_frame: np.ndarray, thresh: float = PERSIST_THRESH) -> np.ndarray:
    """(..., H, W) bool: pixels where the true frame differs from the mean frame (what moves, what is not
    background) by more than `thresh` grey levels in some channel."""
    diff = np.abs(np.asarray(truth, np.int16) - np.asarray(mean_frame, np.int16))
    return diff.max(-1) > thresh


def persistence_psnr(pred, truth, mean_frame, thresh: float = PERSIST_THRESH) -> float:
    """Pooled PSNR over only the persistence_mask pixels (all three channels): painting the background over
    a monster scores low here however good the frame's PSNR is. nan when no pixel qualifies."""
    mask = persistence_mask(truth, mean_frame, thresh)
    if not mask.any():
        return float("nan")
    err = (np.asarray(pred, np.float64) - np.asarray(truth, np.float64))[mask]  # (pixels, 3)
    return pooled_psnr(err**2)


def exact_share(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of frames that are bit-exact (what the 100-dB cap of pooled PSNR would otherwise hide)."""
    if pred.shape != truth.shape:
        raise ValueError(f"exact_share needs equal shapes, got {pred.shape} and {truth.shape}")
    return float(np.mean((pred == truth).reshape(len(pred), -1).all(1)))


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = 16) -> float:
    """Total-variation distance between the per-channel colour histograms of `a` and `b` (each normalised
    over all its frames), averaged over R, G, B: 0 = same colour statistics, 1 = no colour in common."""
    edges = np.linspace(0, 256, bins + 1)
    d = []
    for c in range(3):
        ha = np.histogram(a[..., c], edges)[0] / a[..., c].size
        hb = np.histogram(b[..., c], edges)[0] / b[..., c].size
        d.append(0.5 * np.abs(ha - hb).sum())
    return float(np.mean(d))


# -- intervals over seeds ------------------------------------------------------------------------------
def bootstrap_ci(per_seed, n: int = 1000, seed: int = 0, stat=np.mean, level: float = CI_LEVEL):
    """(lo, hi) percentile interval of `stat` over seeds resampled with replacement (rows of `per_seed`),
    deterministic given `seed`. One seed carries no spread: (nan, nan) rather than a zero-width claim."""
    values = np.asarray(per_seed, dtype=np.float64)
    k = len(values)
    if k < 2:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, k, size=(n, k))
    stats = np.array([stat(values[i]) for i in idx])
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_pooled_psnr(per_seed_mse, n: int = 1000, seed: int = 0, level: float = CI_LEVEL):
    """Interval of pooled PSNR: resample seeds (rows of MSEs, e.g. (seeds, steps)), then pool their MSE."""
    return bootstrap_ci(per_seed_mse, n, seed, stat=pooled_psnr, level=level)


def bootstrap_psnr_gap(mse_a, mse_b, n: int = 1000, seed: int = 0, level: float = CI_LEVEL):
    """Interval of pooled PSNR(a) - pooled PSNR(b) measured on the same seeds (paired: one resample of seeds
    serves both), which is tighter than comparing two separate intervals."""
    pair = np.stack([np.asarray(mse_a, np.float64), np.asarray(mse_b, np.float64)], axis=1)  # (seeds, 2, ...)
    return bootstrap_ci(pair, n, seed, stat=lambda p: pooled_psnr(p[:, 0]) - pooled_psnr(p[:, 1]), level=level)


def differs(ci_a, ci_b=None) -> bool:
    """Two intervals: True only when they do not overlap. One interval of a difference: True only when it
    excludes 0. A difference inside the interval is reported as none (so is any nan interval)."""
    lo, hi = ci_a if ci_b is None else (ci_a[0] - ci_b[1], ci_a[1] - ci_b[0])
    return bool(lo > 0 or hi < 0)  # nan compares False: no claim


# -- trivial baselines ---------------------------------------------------------------------------------
def mean_frame(frames: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the per-pixel mean of (T, H, W, 3) frames, rounded."""
    return np.clip(np.rint(np.asarray(frames, np.float64).mean(0)), 0, 255).astype(np.uint8)


def copy_last_baseline(context_last_frame: np.ndarray, n: int) -> np.ndarray:
    """(n, H, W, 3): the last frame seen before the rollout, held."""
    return np.repeat(np.asarray(context_last_frame, np.uint8)[None], n, axis=0)


def mean_frame_baseline(mean: np.ndarray, n: int) -> np.ndarray:
    """(n, H, W, 3): the constant mean training frame."""
    return np.repeat(np.asarray(mean, np.uint8)[None], n, axis=0)
