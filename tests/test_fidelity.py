"""worldlab.fidelity against hand-made cases with known answers, on square sprite frames and non-square
48x64 (DOOM-sized) frames: SSIM, sharpness and its check, horizontal shift and turn agreement, persistence,
exact share, colour histograms, bootstrap intervals over seeds and the trivial baselines."""

import math

import numpy as np
import pytest

from worldlab import env, evaluate, fidelity
from worldlab.fidelity import (MIN_TURN_PX, PSNR_CAP, SHARP_EPS, SHARP_MIN, bootstrap_ci, bootstrap_pooled_psnr,
                               bootstrap_psnr_gap, box_blur, copy_last_baseline, differs, exact_share,
                               histogram_distance, horizontal_shift, is_sharp, mean_frame, mean_frame_baseline,
                               persistence_psnr, pooled_psnr, sharpness, sharpness_ratio, ssim, ssim_per_frame,
                               turn_agreement, turn_signs)

H, W = 48, 64  # DOOM-sized: non-square on purpose


def db(m):
    return 10 * math.log10(255.0**2 / m)


def texture(h=H, w=W, seed=0):
    """Random 4x4-pixel blocks plus pixel noise: a checker-like picture with no period (phase correlation has
    one answer) and detail at every scale."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(30, 220, (h // 4 + 1, w // 4 + 1, 3))
    img = np.repeat(np.repeat(blocks, 4, 0), 4, 1)[:h, :w] + rng.normal(0, 8, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def scene(h=H, w=W):
    """A real-looking frame: a smooth vertical gradient (sky/wall), a darker floor gradient, two solid shapes."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.stack([90 + 80 * yy, 70 + 60 * yy + 20 * xx, 60 + 40 * xx], -1)
    img[h // 2:] = np.stack([110 - 40 * yy, 90 - 30 * yy, 70 - 20 * yy], -1)[h // 2:]
    img[10:30, 20:30] = (180, 40, 40)
    img[14:40, 44:52] = (30, 160, 50)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def smooth(h=H, w=W):
    """Only a smooth gradient: nothing a blur can remove."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    return np.clip(np.rint(np.stack([60 + 120 * yy, 80 + 100 * xx * yy, 200 - 90 * xx], -1)), 0, 255).astype(np.uint8)


def noisy(f, amp=2, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(f.astype(int) + rng.integers(-amp, amp + 1, f.shape), 0, 255).astype(np.uint8)


def requantized(f):
    return ((f // 8) * 8 + 4).astype(np.uint8)  # 5 bits a channel, mid-bin


# -- one definition ------------------------------------------------------------------------------------
def test_evaluate_uses_the_fidelity_metrics_not_a_copy():
    for name in ("PSNR_CAP", "mse", "psnr", "capped_psnr", "pooled_psnr", "ssim"):
        assert getattr(evaluate, name) is getattr(fidelity, name), name


def test_pooled_psnr_on_non_square_frames_pools_every_pixel():
    a = np.full((2, H, W, 3), 100, np.uint8)
    b = a.copy()
    b[0] += 4  # frame 0 MSE 16, frame 1 exact: pooled MSE 8
    assert pooled_psnr([fidelity.mse(a[0], b[0]), fidelity.mse(a[1], b[1])]) == pytest.approx(db(8))
    assert fidelity.psnr(a, b) == pytest.approx(db(8))


# -- SSIM ----------------------------------------------------------------------------------------------
def test_ssim_of_flat_non_square_frames_is_the_luminance_term():
    a, b = np.full((H, W, 3), 100, np.uint8), np.full((H, W, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2  # no variance: contrast-structure term is c2 / c2 = 1
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_does_not_mix_up_height_and_width():
    a, b = texture(), noisy(texture(), amp=20)
    assert 0.3 < ssim(a, b) < 0.99
    # the Gaussian window is symmetric: transposing both frames must not change SSIM
    assert ssim(a.transpose(1, 0, 2), b.transpose(1, 0, 2)) == pytest.approx(ssim(a, b), abs=1e-12)


def test_ssim_of_a_sequence_is_the_mean_of_its_frames():
    a = np.stack([texture(seed=s) for s in range(3)])
    b = np.stack([a[0], noisy(a[1], 10), 255 - a[2]])
    per = ssim_per_frame(a, b)
    assert per.shape == (3,) and per[0] == pytest.approx(1.0) and per[1] > 0.5 > per[2]
    assert ssim(a, b) == pytest.approx(per.mean(), abs=1e-12)
    assert per[1] == pytest.approx(ssim(a[1], b[1]), abs=1e-12)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:, :8], b[:, :8])


# -- sharpness -----------------------------------------------------------------------------------------
def test_sharpness_of_a_step_edge_is_known_and_a_box_blur_keeps_about_a_ninth():
    f = np.zeros((H, W, 3), np.uint8)
    f[:, W // 2:] = 100  # a vertical edge of 100 grey levels
    # interior Laplacian: -100 left of the edge, +100 right of it, 0 elsewhere, over (H-2) x (W-2) pixels
    assert sharpness(f) == pytest.approx(2 * 100**2 / (W - 2))
    blurred = box_blur(f)
    assert list(blurred[0, W // 2 - 3:W // 2 + 3, 0]) == [0, 0, 33, 67, 100, 100]
    # the ramp's second differences: -33, -1, 1, 33 (squares 2 x 1089 + 2 = 2180 per row)
    expected = (2180 / (W - 2) + SHARP_EPS) / (20000 / (W - 2) + SHARP_EPS)
    assert sharpness_ratio(blurred, f) == pytest.approx(expected) and 0.1 < expected < 0.12


@pytest.mark.parametrize("make", [texture, scene, lambda: env.rollout(3, "forest", env.random_actions(8, 3))[-1]],
                         ids=["checker+noise", "gradient scene", "sprite frame"])
def test_the_blurred_previous_frame_fails_and_a_light_perturbation_passes(make):
    truth = make()
    previous = np.roll(truth, 1, axis=1)  # the frame before: the view moved one pixel
    assert not is_sharp(box_blur(previous), truth)
    assert sharpness_ratio(box_blur(previous), truth) < SHARP_MIN / 2  # not a borderline call
    for near in (noisy(truth), requantized(truth), previous):
        assert is_sharp(near, truth) and sharpness_ratio(near, truth) > 2 * SHARP_MIN


def test_a_smooth_or_flat_truth_has_nothing_to_blur_so_the_check_passes():
    """Documented edge case: with no high frequencies in the truth, blurring removes nothing; the +SHARP_EPS
    floor makes flat vs flat exactly 1 (not 0/0) and a featureless prediction of a smooth frame ~1."""
    g = smooth()
    assert sharpness(g) < 2 * SHARP_EPS  # uint8 rounding is all the detail there is
    assert is_sharp(box_blur(g), g) and sharpness_ratio(box_blur(g), g) == pytest.approx(1, abs=0.2)
    flat = np.full((H, W, 3), 90, np.uint8)
    assert sharpness(flat) == 0 and sharpness_ratio(flat, flat) == 1.0
    assert sharpness_ratio(texture(), flat) > 100  # one-sided: added detail is PSNR's business, not blur's


def test_a_rollout_that_regresses_to_the_mean_is_not_sharp():
    frames = np.stack([np.roll(texture(), 2 * t, axis=1) for t in range(16)])
    grey = mean_frame_baseline(mean_frame(frames), len(frames))
    assert not is_sharp(grey, frames)


# -- horizontal shift and turn agreement ---------------------------------------------------------------
@pytest.mark.parametrize("dx", [3, -5, 1, 0])
def test_horizontal_shift_of_a_rolled_picture_is_the_roll(dx):
    a = texture()
    assert horizontal_shift(a, np.roll(a, dx, axis=1)) == pytest.approx(dx, abs=0.1)
    assert horizontal_shift(a, np.roll(a, dx, axis=1), subpixel=False) == dx


def test_horizontal_shift_of_a_panning_window_and_of_featureless_frames():
    big = texture(H, 120)
    # the window moves LEFT over the scene by 4 px: the content moves RIGHT by 4 (what a left turn does)
    a, b = big[:, 40:40 + W], big[:, 36:36 + W]
    assert horizontal_shift(a, b) == pytest.approx(4, abs=0.3)
    assert horizontal_shift(b, a) == pytest.approx(-4, abs=0.3)
    assert horizontal_shift(a, a) == 0.0
    flat = np.full((H, W, 3), 77, np.uint8)
    assert horizontal_shift(flat, flat) == 0.0


def test_turn_signs_follow_the_documented_doom_convention():
    # turning LEFT slides the picture RIGHT: positive shift
    assert turn_signs([("left",), ("right",), (), ("left", "right"), ("up", "left"), ("down",)]) == [1, -1, 0, 0, 1, 0]


def test_turn_agreement_true_view_agrees_and_a_mirrored_view_fails():
    big = texture(H, 200)
    keys = [("left",)] * 6 + [()] * 3 + [("right",)] * 6
    x, xs = 80, [80]
    for k in keys:  # a left turn moves the window left (content right), 3 px a frame
        x += -3 if "left" in k else 3 if "right" in k else 0
        xs.append(x)
    frames = np.stack([big[:, x:x + W] for x in xs])
    signs = turn_signs(keys)
    assert turn_agreement(frames, signs) == 1.0
    assert turn_agreement(frames[:, :, ::-1], signs) == 0.0  # mirrored: every turn the wrong way
    frozen = np.repeat(frames[:1], len(frames), axis=0)
    assert turn_agreement(frozen, signs) == 0.0  # a view that stops turning agrees with nothing
    half = frames.copy()
    half[1:4] = half[0]  # 3 of the 12 turning transitions frozen -> 9 / 12
    assert turn_agreement(half, signs) == pytest.approx(9 / 12)
    assert math.isnan(turn_agreement(frames[:4], [0, 0, 0]))  # no turning frame: no figure
    with pytest.raises(ValueError, match="one sign per transition"):
        turn_agreement(frames, signs[:-1])
    assert MIN_TURN_PX <= 1  # the 1-px roll of a real turn must count


# -- persistence, exact frames, histograms -------------------------------------------------------------
def test_persistence_psnr_scores_only_what_differs_from_the_mean_frame():
    mean = np.full((H, W, 3), 100, np.uint8)
    truth = noisy(mean, amp=10)  # background flicker below the threshold
    truth[20:24, 30:34] = 200  # a 4x4 "monster"
    painted_over = truth.copy()
    painted_over[20:24, 30:34] = 100  # the background drawn over it; every other pixel exact
    assert persistence_psnr(painted_over, truth, mean) == pytest.approx(db(100**2))  # 8.13 dB
    assert pooled_psnr([fidelity.mse(painted_over, truth)]) > 28  # the whole-frame figure barely notices
    kept = np.full_like(truth, 140)
    kept[20:24, 30:34] = 200  # monster exact, background all wrong
    assert persistence_psnr(kept, truth, mean) == PSNR_CAP
    # (seeds, steps) of frames with one mean frame per seed broadcast over steps
    two = np.stack([np.stack([painted_over] * 3), np.stack([truth] * 3)])
    assert persistence_psnr(two, np.stack([np.stack([truth] * 3)] * 2), np.stack([mean, mean])[:, None]) == \
        pytest.approx(db(100**2 / 2))
    assert math.isnan(persistence_psnr(mean, noisy(mean, amp=10), mean))  # nothing moves: no figure


def test_exact_share_counts_bit_exact_frames():
    a = np.stack([texture(seed=s) for s in range(4)])
    b = a.copy()
    b[2, 5, 7, 1] ^= 1  # one bit in one channel of one pixel
    assert exact_share(a, a) == 1.0 and exact_share(a, b) == 0.75
    with pytest.raises(ValueError):
        exact_share(a, b[:3])


def test_histogram_distance_known_cases():
    a = texture()
    shuffled = np.random.default_rng(0).permutation(a.reshape(-1, 3)).reshape(a.shape)
    assert histogram_distance(a, a) == 0.0
    assert histogram_distance(a, shuffled) == 0.0  # colour statistics, not geometry
    black, white = np.zeros((H, W, 3), np.uint8), np.full((H, W, 3), 255, np.uint8)
    assert histogram_distance(black, white) == 1.0
    half = black.copy()
    half[:, : W // 2] = 255
    assert histogram_distance(half, black) == pytest.approx(0.5)
    forest, night, forest2 = (env.rollout(s, th, env.random_actions(4, s)) for s, th in
                              ((1, "forest"), (1, "night"), (2, "forest")))
    assert histogram_distance(forest, night) > 0.8  # a prompt switch changes the palette (blue shares a bin)
    assert histogram_distance(forest, forest2) < 0.05  # another scene in the same theme does not


# -- intervals over seeds ------------------------------------------------------------------------------
def test_bootstrap_of_identical_seeds_is_zero_width():
    assert bootstrap_ci([25.0] * 10) == (25.0, 25.0)
    assert bootstrap_pooled_psnr(np.full((5, 16), 4.0)) == (db(4.0), db(4.0))


def test_bootstrap_interval_of_a_known_spread():
    vals = [20.0, 22.0, 24.0, 26.0, 28.0, 21.0, 27.0, 23.0, 25.0, 24.0]
    lo, hi = bootstrap_ci(vals)
    assert 20 < lo < np.mean(vals) < hi < 28
    assert bootstrap_ci(vals) == (lo, hi)  # deterministic given its rng seed
    assert bootstrap_ci(vals, seed=1) != (lo, hi)
    assert all(math.isnan(v) for v in bootstrap_ci([24.0]))  # one seed: no interval, not a zero-width one
    mses = np.array([[1.0] * 8, [100.0] * 8, [10.0] * 8])
    plo, phi = bootstrap_pooled_psnr(mses)
    assert db(100.0) <= plo < pooled_psnr(mses) < phi <= db(1.0)
    assert plo == pytest.approx(db(100.0))  # some resamples draw the bad seed three times


def test_differs_reports_a_difference_inside_the_interval_as_none():
    assert differs((1, 2), (3, 4)) and differs((3, 4), (1, 2))
    assert not differs((1, 3), (2, 4))
    assert differs((0.2, 1.0)) and not differs((-0.5, 1.0))
    assert not differs((float("nan"), float("nan")))
    base = np.random.default_rng(0).uniform(10, 50, (6, 8))
    assert bootstrap_psnr_gap(base, base) == (0.0, 0.0) and not differs(bootstrap_psnr_gap(base, base))
    gap = bootstrap_psnr_gap(base / 4, base)  # 4x less error on every seed: +6.02 dB, no spread
    assert gap == pytest.approx((db(1) - db(4),) * 2) and differs(gap)


# -- baselines -----------------------------------------------------------------------------------------
def test_baselines_are_prediction_arrays():
    last = texture()
    held = copy_last_baseline(last, 5)
    assert held.shape == (5, H, W, 3) and held.dtype == np.uint8 and (held == last).all()
    frames = np.stack([np.zeros((H, W, 3)), np.full((H, W, 3), 3)]).astype(np.uint8)
    assert (mean_frame(frames) == 2).all()  # 1.5 rounds half to even: 2
    m = mean_frame_baseline(mean_frame(frames), 4)
    assert m.shape == (4, H, W, 3) and exact_share(m, np.repeat(frames[1:], 4, 0) - 1) == 1.0
