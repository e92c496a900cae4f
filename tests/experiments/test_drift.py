"""Long-horizon drift measurement against known answers: an exact oracle scores the cap and matching colours,
an oracle with a known error scores exactly that, the shipped model's runs stay in the physical range, and
anchor "none" (attention sink 0) is a real pure sliding window whose streaming cache equals a rebuild."""

import copy
import dataclasses
import math
import pathlib

import numpy as np
import pytest
import torch

from tests.test_evaluate import FaithfulOracle
from worldlab import env
from worldlab.evaluate import PSNR_CAP, rollout_seed, theme_for_seed
from worldlab.experiments.drift import (colour_stats, drift_plots, drift_rollout, load_drift_model, measure_drift,
                                        palette_classes)
from worldlab.experiments.provenance import PROVENANCE_KEYS
from worldlab.model import load_model

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "worldlab" / "checkpoints" / "tiny.safetensors"
needs_shipped = pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped checkpoint")
GRID = {"anchor": ["sink", "none"], "window": ["short"], "kv": ["none"]}
STEPS = 20


def db(m):
    return 10 * math.log10(255.0**2 / m)


def oracle_drift(flip_odd=False):
    return measure_drift([1], STEPS, GRID, model_for=lambda *point: FaithfulOracle(flip_odd))


def test_exact_model_scores_the_cap_and_the_true_colours():
    ds = oracle_drift()
    assert ds["psnr"].dims == ("anchor", "window", "kv", "seed", "step")
    assert ds["mean_rgb_model"].dims == ("anchor", "window", "kv", "seed", "step", "channel")
    assert ds["psnr_head"].dims == ("anchor", "window", "kv")
    assert list(ds["anchor"].values) == ["sink", "none"] and list(ds["step"].values) == list(range(1, STEPS + 1))
    for name in ("psnr", "psnr_pooled", "psnr_head", "psnr_tail", "psnr_all"):
        assert (ds[name] == PSNR_CAP).all(), name
    np.testing.assert_array_equal(ds["mean_rgb_model"], ds["mean_rgb_truth"])
    assert (ds["palette_tv"] == 0).all() and (ds["off_palette"] == 0).all() and (ds["rgb_shift"] == 0).all()
    assert ds["first_wrong_step"].isnull().all()
    assert (ds["agent_err_px"] < 1).all()  # the centroid of an exact frame's agent colour
    assert all(k in ds.attrs for k in PROVENANCE_KEYS)


def test_known_error_gives_known_figures():
    ds = oracle_drift(flip_odd=True).isel(anchor=0, window=0, kv=0, seed=0)
    # frames 0..7 prefilled, step s shows frame 7 + s: even steps are odd frames, every value's low bit flipped
    odd = ds["step"].values % 2 == 0
    np.testing.assert_array_equal(ds["mse"].values, np.where(odd, 1.0, 0.0))
    np.testing.assert_allclose(ds["psnr"].values, np.where(odd, db(1.0), PSNR_CAP))
    assert float(ds["psnr_all"]) == pytest.approx(db(0.5))  # pooled: PSNR of the mean MSE, not the mean PSNR
    np.testing.assert_array_equal(ds["off_palette"].values, np.where(odd, 1.0, 0.0))  # a flipped colour is none
    np.testing.assert_array_equal(ds["palette_tv"].values, np.where(odd, 1.0, 0.0))
    assert float(ds["first_wrong_step"]) == 2
    assert (np.abs(ds["mean_rgb_model"] - ds["mean_rgb_truth"]) <= 1).all()


def test_colour_stats_of_a_frame_against_itself_and_an_off_palette_frame():
    theme = "snow"
    f = env.World(4, theme).render()
    assert (palette_classes(f, theme) < 6).all()
    same = colour_stats(f, f, theme)
    assert same["palette_tv"] == 0 and same["off_palette"] == 0
    grey = np.full_like(f, 128)
    other = colour_stats(grey, f, theme)
    assert other["palette_tv"] == 1 and other["off_palette"] == 1
    np.testing.assert_allclose(other["mean_rgb_model"], [128, 128, 128])


@needs_shipped
def test_drift_rollout_follows_the_eval_protocol():
    torch.set_num_threads(1)
    model = load_model()
    ours = drift_rollout(model, 2, 12)
    ref = rollout_seed(model, 2, 12, theme_for_seed(2))
    np.testing.assert_array_equal(ours["mse"], ref["mse"])
    np.testing.assert_array_equal(ours["agent_err_px"], ref["agent_err"])


@needs_shipped
def test_shipped_model_anchor_none_is_a_sliding_window_and_stays_in_range():
    torch.set_num_threads(1)
    ds = measure_drift([1], STEPS, GRID)
    assert ((ds["psnr"] > 10) & (ds["psnr"] <= PSNR_CAP)).all()
    assert ((ds["psnr_head"] > 20) & (ds["psnr_head"] <= PSNR_CAP)).all()
    assert (ds["off_palette"] == 0).all()  # the compositor paints theme colours only
    assert ((ds["palette_tv"] >= 0) & (ds["palette_tv"] <= 1)).all()
    sink = ds["sink_frames"].isel(window=0, kv=0)
    assert sink.sel(anchor="sink") == 1 and sink.sel(anchor="none") == 0
    kv = ds["kv_bytes"].isel(window=0, kv=0, seed=0)
    assert kv.sel(anchor="none") < kv.sel(anchor="sink")  # one frame fewer in the cache


@needs_shipped
@pytest.mark.parametrize("window", ["short", "long"])
def test_sink_zero_streaming_matches_a_pure_sliding_window_parallel_pass(window):
    # tests/model's streaming == parallel check with the sink overridden to 0: the parallel reference is the
    # training pass with cfg.sink = 0 (a copy of the net), 24 frames so the ring wraps.
    m = load_drift_model("none", window, "none")
    ref = copy.deepcopy(m.net)
    ref.cfg = dataclasses.replace(ref.cfg, sink=0)
    acts = env.random_actions(23, seed=11)
    frames = env.rollout(11, "snow", acts)
    obs = m.net.codec.tokenize(torch.from_numpy(frames))
    a = torch.tensor([[env.action_id(k) for k in acts] + [4]])
    th = torch.full_like(a, env.THEMES.index("snow"))
    with torch.no_grad():
        par = ref.forward_seq(obs[None], a, th, m.window)[0]
        with_sink = m.net.forward_seq(obs[None], a, th, m.window)[0]
    s = m.init_state("snow")
    m.prefill(s, frames[:2], acts[:1])
    for t in range(1, 24):
        s.next_id = t
        out = m._advance([s], obs[t][None], a[:, t], th[:, t])
        s.history[t] = (obs[t], int(a[0, t]))
        m._evict(s)
        assert torch.allclose(out[0], par[t], atol=1e-4), f"frame {t}"
    assert s.caches[0].frame_ids() == list(range(24 - m.window, 24))  # no frame kept past the window
    assert not torch.allclose(with_sink[m.window:], par[m.window:], atol=1e-4)  # the sink did matter


@needs_shipped
def test_sink_override_is_checked():
    with pytest.raises(ValueError, match="sink must be an int in 0..1"):
        load_model(sink=2)


@pytest.mark.parametrize("configs, match", [
    ({"anchor": ["sink"], "window": ["short"]}, "configs must map exactly"),
    ({"anchor": ["periodic"], "window": ["short"], "kv": ["none"]}, "configs\\['anchor'\\]"),
    ({"anchor": ["sink"], "window": ["short", "short"], "kv": ["none"]}, "configs\\['window'\\]"),
    ({"anchor": ["sink"], "window": ["short"], "kv": []}, "configs\\['kv'\\]"),
    ({"anchor": ["sink"], "window": ["short"], "kv": 4}, "configs\\['kv'\\]"),
])
def test_bad_configs_are_one_line_errors(configs, match):
    with pytest.raises(ValueError, match=match):
        measure_drift([1], 4, configs, model_for=lambda *p: FaithfulOracle())


def test_bad_steps_and_seeds_are_refused():
    with pytest.raises(ValueError, match="steps"):
        measure_drift([1], 0, GRID, model_for=lambda *p: FaithfulOracle())
    with pytest.raises(ValueError, match="seeds"):
        measure_drift([], 4, GRID, model_for=lambda *p: FaithfulOracle())


def test_drift_plots_render_one_figure_per_statistic():
    import holoviews as hv

    layout = drift_plots(oracle_drift(flip_odd=True), smooth=4, logx=True)
    assert len(layout) == 3
    assert all(len(overlay) == 2 for overlay in layout)  # one curve per configuration
    fig = hv.render(layout, backend="bokeh")
    assert len(fig.children) == 3
    with pytest.raises(ValueError, match="smooth"):
        drift_plots(oracle_drift(), smooth=0)
