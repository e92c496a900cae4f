"""The measuring instruments of worldlab.evaluate against known answers: PSNR (per frame and pooled), SSIM,
collapse flags, the hidden-object scenario simulated in the environment, the gallery, and `worldlab eval`."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldlab import env, gallery
from worldlab.engine.oracle import EnvOracle
from worldlab.evaluate import (OCC_HIDDEN, OCC_LAST, OCC_SCORED, OCC_THEMES, OCCLUSION_VARIANTS, PSNR_CAP,
                               collapse_flags, evaluate, mse, occlusion_scores, pooled_psnr, psnr, ssim,
                               theme_for_seed, training_mean_frame)
from worldlab.model import CONTEXT_FRAMES

WORLDLAB = str(Path(sys.executable).parent / "worldlab")
PSNR_KEYS = ("psnr_step1", "psnr_mean", "psnr_mean_all", "psnr_tail", "switch_psnr", "switch_psnr_min",
             "occlusion_psnr", "occlusion_psnr_all")
QUALITY_KEYS = ("psnr_mean_ci", "psnr_tail_ci", "switch_psnr_ci", "ssim_mean_ci", "agent_err_px_ci", "sharpness_ratio",
                "sharp", "sharpness_ratio_last", "sharp_last", "exact_share", "persistence_psnr", "switch_hist_dist")
ALL_KEYS = PSNR_KEYS + QUALITY_KEYS + (
    "ssim_mean", "agent_err_px", "switch_ms", "collapse", "collapse_seeds", "kv_bytes", "model_ms_p50", "model_ms_p95",
    "steps", "seeds", "psnr_per_step", "psnr_per_seed", "config", "baselines")
BASELINES = ("copy_last", "mean_frame", "painter")
BASELINE_KEYS = ("psnr_step1", "psnr_mean", "psnr_tail", "switch_psnr", "ssim_mean", "agent_err_px", "psnr_per_seed",
                 "model_gap_psnr_mean_ci") + QUALITY_KEYS


def db(m):
    return 10 * math.log10(255.0**2 / m)


class FaithfulOracle(EnvOracle):
    """EnvOracle whose prefill adopts the world the frames came from (EnvOracle.prefill resets its own seed,
    so it matches neither other seeds nor a placed scene). flip_odd: on odd frame indices return the frame
    with every value's lowest bit flipped (MSE exactly 1) to give evaluate() a known pooled answer."""

    def __init__(self, flip_odd=False):
        super().__init__()
        self.flip_odd = flip_odd
        self.makers = [lambda th, s=s: env.World(s, th) for s in range(8)]
        self.makers += [lambda th, v=v: v.world(th) for v in OCCLUSION_VARIANTS]

    def prefill(self, state, frames, actions):
        theme = state.world.theme
        world = next(w for w in (make(theme) for make in self.makers) if np.array_equal(w.render(), frames[0]))
        for a, frame in zip(actions, frames[1:]):
            assert np.array_equal(world.step(a), frame)
        state.world = world

    def step(self, states, actions):
        out = super().step(states, actions)
        for i, s in enumerate(states):
            if self.flip_odd and s.world.t % 2:
                out[i] ^= 1
        return out


# -- PSNR ----------------------------------------------------------------------------------------------
def test_psnr_identical_is_inf_and_uniform_error_is_known():
    f = env.World(3, "forest").render()
    assert psnr(f, f) == float("inf")
    g = np.full((64, 64, 3), 100, np.uint8)
    assert psnr(g, g + 10) == pytest.approx(db(100), abs=1e-9)
    assert db(100) == pytest.approx(28.1308, abs=1e-4)


def test_pooled_psnr_is_psnr_of_the_mean_mse_not_the_mean_psnr():
    mses = [0.01, 100.0]
    assert pooled_psnr(mses) == pytest.approx(db(50.005), abs=1e-9)  # 31.14 dB
    mean_of_psnrs = (db(0.01) + db(100.0)) / 2  # 48.13 dB: one near-exact frame hides a bad one
    assert mean_of_psnrs - pooled_psnr(mses) > 15
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8) for _ in range(2))
    # equal-sized frames: the pooled figure is the PSNR of all the pixels at once
    assert pooled_psnr([mse(a[0], b[0]), mse(a[1], b[1])]) == pytest.approx(psnr(a, b), abs=1e-9)


def test_pooled_psnr_caps_an_exact_result_and_never_exceeds_the_cap():
    assert pooled_psnr(np.zeros((3, 5))) == PSNR_CAP == 100.0
    assert pooled_psnr([0.0, 0.0, 1e-9]) == PSNR_CAP  # 155 dB uncapped: must not out-score exact
    assert pooled_psnr([1.0]) == pytest.approx(db(1.0))
    with pytest.raises(ValueError):
        pooled_psnr([])


# -- SSIM, collapse ------------------------------------------------------------------------------------
def test_ssim_identical_is_one_and_inverse_is_strongly_negative():
    f = env.World(3, "forest").render()
    assert ssim(f, f) == pytest.approx(1.0, abs=1e-12)
    r = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert ssim(r, 255 - r) < -0.9  # structure term is exactly -1 for an inverse; luminance ~1 at mid-grey
    assert ssim(f, 255 - f) < 0.1


def test_collapse_flags_known_cases():
    truth = env.rollout(5, "desert", env.random_actions(24, 5))
    assert not np.array_equal(truth[0], truth[16])
    assert collapse_flags(truth, truth) == {"frozen": False, "saturated": False}
    frozen = np.repeat(truth[:1], len(truth), axis=0)
    assert collapse_flags(frozen, truth) == {"frozen": True, "saturated": False}
    assert collapse_flags(frozen, frozen)["frozen"] is False  # the truth did not move either
    flat = truth.copy()
    flat[10] = 128
    assert collapse_flags(flat, truth) == {"frozen": False, "saturated": True}


# -- hidden-object scenario ----------------------------------------------------------------------------
def _colour_counts(variant, theme):
    t = env.THEME_LIST[env.THEMES.index(theme)]
    w = variant.world(theme)
    frames = [w.render()] + [w.step(a) for a in variant.actions()]
    count = lambda f, c: int((f == np.array(c, np.uint8)).all(-1).sum())  # noqa: E731
    return [(count(f, t.objects[0]), count(f, t.objects[1]), count(f, t.agent)) for f in frames]


def _last_seen_age(counts):
    """At the block that predicts the first re-emergence frame: how many frames back the object was last
    (partly) visible; the window must reach that far back."""
    first_back = next(t for t in range(OCC_HIDDEN[-1] + 1, len(counts)) if counts[t] > 0)
    last_seen = max(t for t in range(first_back) if counts[t] > 0)
    return (first_back - 1) - last_seen


@pytest.mark.parametrize("theme", OCC_THEMES)
@pytest.mark.parametrize("variant", OCCLUSION_VARIANTS, ids=lambda v: v.name)
def test_occlusion_scenario_hides_the_object_longer_than_the_short_window(variant, theme):
    from worldlab.config import preset

    cfg = preset("tiny")
    counts = _colour_counts(variant, theme)
    assert len(counts) == OCC_LAST + 1
    obj0 = [c[0] for c in counts]
    assert [t for t, n in enumerate(obj0) if n == 0] == list(OCC_HIDDEN)  # the pillar alone hides it
    assert 0 < obj0[OCC_HIDDEN[0] - 1] < 16 and 0 < obj0[OCC_SCORED[0]] < 16  # partly hidden either side
    # a window of W frames (the newest included) reaches W - 1 frames back
    assert cfg.window("short") - 1 < _last_seen_age(obj0) == 4 < cfg.window("long") - 1
    assert obj0[0] == 16 and all(obj0[t] == 16 for t in range(OCC_SCORED[-1] + 3, OCC_LAST + 1))
    assert all(c[1] == 16 for c in counts)  # object 1 never hidden, never touching object 0
    assert all(c[2] == env.AGENT**2 for c in counts)
    w = variant.world(theme)
    for t, a in enumerate(variant.actions(), start=1):
        w.step(a)
        assert tuple(int(v) for v in w.objects[0]) == variant.object_at(t)  # no wall bounce on the way


def test_occlusion_variants_cover_both_directions_and_every_vertical_speed():
    assert sorted(v.velocity for v in OCCLUSION_VARIANTS) == [(vx, vy) for vx in (-1, 1) for vy in (-2, -1, 1, 2)]


# -- evaluate() with known answers ---------------------------------------------------------------------
def test_a_perfect_model_scores_the_cap_everywhere():
    res = evaluate(FaithfulOracle(), seeds=[1, 2], steps=8)
    for k in PSNR_KEYS:
        assert res[k] == PSNR_CAP, k
    assert res["psnr_per_step"] == [PSNR_CAP] * 8 and res["psnr_per_seed"] == [PSNR_CAP] * 2
    assert res["ssim_mean"] == pytest.approx(1.0) and res["agent_err_px"] == 0.0
    assert res["collapse"] is False and res["collapse_seeds"] == []
    assert set(ALL_KEYS) <= set(res)
    assert res["exact_share"] == 1.0 and res["sharp"] and res["sharp_last"] and res["sharpness_ratio"] == 1.0
    assert res["psnr_mean_ci"] == res["switch_psnr_ci"] == [PSNR_CAP, PSNR_CAP]  # identical seeds: zero width
    assert res["persistence_psnr"] == PSNR_CAP and res["switch_hist_dist"] == 0.0
    assert sorted(res["baselines"]) == sorted(BASELINES)
    for name, b in res["baselines"].items():
        assert set(BASELINE_KEYS) <= set(b), name
        assert b["psnr_mean"] < 35 and b["exact_share"] == 0.0, name  # nothing trivial is exact here
        assert b["model_gap_psnr_mean_ci"][0] > 60, name  # the exact model beats it on every resample
    json.dumps(res, allow_nan=False)
    assert occlusion_scores(FaithfulOracle()) == {"occlusion_psnr": PSNR_CAP, "occlusion_psnr_all": PSNR_CAP}


def test_evaluate_pools_mse_instead_of_averaging_capped_psnrs():
    res = evaluate(FaithfulOracle(flip_odd=True), seeds=[1, 2], steps=8)  # steps make frames 8..15
    assert res["psnr_step1"] == PSNR_CAP  # frame 8: exact in both seeds
    assert res["psnr_per_step"] == pytest.approx([PSNR_CAP, db(1.0)] * 4)
    assert res["psnr_mean"] == pytest.approx(db(0.5))  # 51.14 dB, not (100 + 48.13) / 2
    assert res["psnr_per_seed"] == pytest.approx([db(0.5)] * 2)
    assert res["switch_psnr"] == pytest.approx(db(1 / 3))  # switch frames 24, 25, 26: one flipped
    assert res["switch_psnr_min"] == pytest.approx(db(1 / 3))
    assert res["occlusion_psnr"] == pytest.approx(db(0.5))  # frames 14..17
    assert res["occlusion_psnr_all"] == pytest.approx(db(8 / 17))  # frames 8..24: 9, 11, ..., 23 flipped
    assert res["exact_share"] == 0.5  # the even frames
    assert res["sharp"] and res["sharpness_ratio"] > 1  # flipped low bits add detail; nothing is blurred


def test_baselines_score_what_they_predict_on_the_same_seeds_and_keys():
    seeds, steps = [1, 2], 8
    res = evaluate(FaithfulOracle(), seeds=seeds, steps=steps)["baselines"]
    held, mean_mse, painter_gen, truth = [], [], [], []
    for s in seeds:
        theme = theme_for_seed(s)
        frames = env.rollout(s, theme, env.random_actions(CONTEXT_FRAMES - 1 + steps, s))
        last, tru = frames[CONTEXT_FRAMES - 1], frames[CONTEXT_FRAMES:]
        held += [mse(last, t) for t in tru]
        mean_mse += [mse(training_mean_frame(theme), t) for t in tru]
        truth.append(tru)
    assert res["copy_last"]["psnr_mean"] == pytest.approx(pooled_psnr(held))
    assert res["mean_frame"]["psnr_mean"] == pytest.approx(pooled_psnr(mean_mse))
    assert res["copy_last"]["psnr_step1"] > res["copy_last"]["psnr_tail"]  # the held frame ages
    assert res["painter"]["agent_err_px"] == 0.0 and res["painter"]["agent_err_px_ci"] == [0.0, 0.0]
    assert res["mean_frame"]["agent_err_px"] == env.SIZE  # no agent in the mean frame: scored as not found
    assert res["painter"]["psnr_mean"] > max(res["copy_last"]["psnr_mean"], res["mean_frame"]["psnr_mean"])
    lo, hi = res["copy_last"]["psnr_mean_ci"]
    assert lo <= res["copy_last"]["psnr_mean"] <= hi and lo < hi  # two different seeds: a real interval


def test_the_painter_draws_everything_but_the_objects():
    from worldlab.model.painter import painter

    model, w = painter(), env.World(4, "snow")
    actions = env.random_actions(40, 4)
    truth = [w.reset()] + [w.step(a) for a in actions[: CONTEXT_FRAMES - 1]]
    state = model.init_state("a snowy walk")
    model.prefill(state, np.stack(truth), actions[: CONTEXT_FRAMES - 1])
    for a in actions[CONTEXT_FRAMES - 1:]:
        frame, gt = model.step([state], [a])[0], w.step(a)
        objects = np.zeros(frame.shape[:2], bool)
        for x, y in w.objects:
            objects[y:y + env.OBJECT, x:x + env.OBJECT] = True
        assert ((frame != gt).any(-1) <= objects).all()  # differences only where an object is drawn
        assert tuple(state.agent) == tuple(w.agent)
    with pytest.raises(ValueError, match="no checkpoint"):
        painter(checkpoint="x.safetensors")


def test_collapse_seeds_names_the_seed_and_flag():
    class Frozen(FaithfulOracle):
        def step(self, states, actions):
            super().step(states, actions)
            return np.full((len(states), 64, 64, 3), 128, np.uint8)

    res = evaluate(Frozen(), seeds=[1, 3], steps=20)
    assert res["collapse"] is True
    assert res["collapse_seeds"] == [{"seed": 1, "flags": ["frozen", "saturated"]},
                                     {"seed": 3, "flags": ["frozen", "saturated"]}]


def test_gallery_tiles_are_the_upscaled_frames(tmp_path):
    rng = np.random.default_rng(1)
    truth, model = (rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8) for _ in range(2))
    path = tmp_path / "g.png"
    assert gallery.write_gallery(path, [(7, truth, model)]) == [1, 8, 32]
    img = np.asarray(Image.open(path).convert("RGB"))
    side = 64 * gallery.SCALE
    assert img.shape == (gallery.HEADER_H + 2 * (side + gallery.GAP), gallery.LABEL_W + 3 * (side + gallery.GAP), 3)
    up = lambda f: np.repeat(np.repeat(f, gallery.SCALE, 0), gallery.SCALE, 1)  # noqa: E731
    x, y_model = gallery.LABEL_W + 2 * (side + gallery.GAP), gallery.HEADER_H + side + gallery.GAP
    assert np.array_equal(img[gallery.HEADER_H:gallery.HEADER_H + side, gallery.LABEL_W:gallery.LABEL_W + side],
                          up(truth[0]))
    assert np.array_equal(img[y_model:y_model + side, x:x + side], up(model[31]))
    assert img[:, :gallery.LABEL_W].max() > 200  # labels drawn in light ink on the dark margin
    with pytest.raises(ValueError, match="directory does not exist"):
        gallery.check_path(tmp_path / "missing" / "g.png")
    with pytest.raises(ValueError, match=".png"):
        gallery.check_path(tmp_path / "g.jpg")


# -- the CLI -------------------------------------------------------------------------------------------
def _cli(*args):
    environ = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([WORLDLAB, "eval", "--threads", "1", *args], capture_output=True, text=True,
                          timeout=600, env=environ)


@pytest.mark.parametrize("args, message", [
    (("--seeds", "a,b"), "--seeds must be comma-separated integers, got 'a,b'"),
    (("--steps", "0"), "steps must be an integer >= 1, got 0"),
    (("--seeds", "1,-2"), "seeds must be non-negative integers, got -2"),
    (("--gallery", "/nonexistent-dir/g.png"), "--gallery directory does not exist: '/nonexistent-dir'"),
    (("--checkpoint", "/nonexistent.safetensors"), "checkpoint not found: /nonexistent.safetensors"),
])
def test_bad_eval_input_is_one_line_and_no_traceback(args, message):
    out = _cli(*args)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"worldlab eval: error: {message}"]
    assert out.stdout == ""


@pytest.mark.slow
def test_eval_json_on_the_micro_checkpoint(micro_ckpt, tmp_path):
    png = tmp_path / "gallery.png"
    out = _cli("--checkpoint", str(micro_ckpt[0]), "--seeds", "1,2", "--steps", "8", "--json", "--gallery", str(png))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(ALL_KEYS) <= set(res)
    for k in PSNR_KEYS:
        assert math.isfinite(res[k]) and 5 < res[k] <= PSNR_CAP, k
    assert all(5 < v <= PSNR_CAP for v in res["psnr_per_step"]) and len(res["psnr_per_step"]) == 8
    assert len(res["psnr_per_seed"]) == 2
    assert res["switch_psnr_min"] <= res["switch_psnr"] + 1e-9
    assert 0 <= res["ssim_mean"] <= 1 and 0 <= res["agent_err_px"] <= env.SIZE
    assert res["model_ms_p50"] > 0 and res["model_ms_p95"] >= res["model_ms_p50"] and res["kv_bytes"] > 0
    assert isinstance(res["collapse"], bool) and res["collapse"] == bool(res["collapse_seeds"])
    assert res["steps"] == 8 and res["seeds"] == [1, 2] and res["config"]["window"] == "short"
    assert res["gallery"] == str(png) and res["gallery_steps"] == [1, 8]
    cell = 64 * gallery.SCALE + gallery.GAP
    assert Image.open(png).size == (gallery.LABEL_W + 2 * cell, gallery.HEADER_H + 4 * cell)  # 2 steps x 4 rows
