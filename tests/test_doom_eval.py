"""worldlab.doom_eval: the real game scores exact and beats both baselines; deliberately bad models (copy-last,
mean frame, a mirrored view, a blurred view) fail the targets they should; the CLI prints JSON or one-line errors.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from worldlab import doom
from worldlab.fidelity import box_blur

try:
    doom.vizdoom()
    from worldlab.engine.doom_engine import DoomEngine, doom_engine
except doom.DoomUnavailable as exc:
    pytest.skip(f"vizdoom does not import here: {exc}", allow_module_level=True)

from worldlab import doom_eval  # noqa: E402

torch.set_num_threads(1)
SEEDS = (100_000, 100_001)  # 100000 turns in place within the first 16 steps; 100001 only walks and turns
STEPS = 16


# -- deliberately bad models (module:factory style, like a plug-in) --------------------------------------
class _Held:
    """Repeats one frame: the last context frame (copy-last) or the training mean frame of its style."""

    frame_shape = doom.FRAME_SHAPE
    world = "doom"

    def __init__(self, mean: bool):
        self.mean, self.map = mean, doom.DEFAULT_MAP

    def init_state(self, prompt):
        return {"style": doom.style_for_prompt(prompt), "last": None}

    def prefill(self, state, frames, actions):
        state["last"] = np.asarray(frames[-1])

    def _frame(self, state):
        return doom_eval.training_mean_frame(self.map, state["style"]) if self.mean else state["last"]

    def step(self, states, actions):
        return np.stack([self._frame(s) for s in states])

    def recache(self, state, prompt):
        state["style"] = doom.style_for_prompt(prompt)

    def reset(self, state):
        state["last"] = None

    def kv_bytes(self, state):
        return 0


class _Transformed(DoomEngine):
    """The real game's frames through a fixed transform (a mirror, a blur)."""

    def __init__(self, transform):
        super().__init__()
        self.transform = transform

    def step(self, states, actions):
        return np.ascontiguousarray(self.transform(super().step(states, actions)))


def copy_last(*, toggles=None, device="cpu", checkpoint=None):
    return _Held(mean=False)


def mean_frame(*, toggles=None, device="cpu", checkpoint=None):
    return _Held(mean=True)


def mirrored(*, toggles=None, device="cpu", checkpoint=None):
    return _Transformed(lambda f: f[:, :, ::-1])  # (B, H, W, 3): left-right flipped


def blurred(*, toggles=None, device="cpu", checkpoint=None):
    return _Transformed(box_blur)


@pytest.fixture(scope="module")
def engine_res():
    return doom_eval.evaluate(doom_engine(), SEEDS, STEPS)


@pytest.fixture(scope="module")
def bad():
    """Each bad model on the one seed that turns in place early (one evaluation each, shared by the tests)."""
    return {name: doom_eval.evaluate(f(), SEEDS[:1], STEPS) for name, f in
            (("copy_last", copy_last), ("mean_frame", mean_frame), ("mirrored", mirrored), ("blurred", blurred))}


def test_engine_scores_every_figure_exact(engine_res):
    r = engine_res
    for key in ("tf_psnr", "psnr_16", "persistence_psnr_16", "switch_luma_psnr"):
        assert r[key]["value"] == 100.0 and r[key]["ci"] == [100.0, 100.0], key  # identical runs: zero width
    assert r["tf_ssim"]["value"] == pytest.approx(1.0) and r["ssim_16"]["value"] == pytest.approx(1.0)
    assert r["tf_sharpness"]["value"] == 1.0 and r["sharpness_last"]["sharp"]
    assert r["exact_share"] == 1.0 and r["flat_frames"] == 0 and not r["collapse"]
    assert r["turns"]["16"]["ratio"]["value"] == 1.0 and r["turns"]["16"]["turning_frames"] > 0
    assert r["truth"]["turns"]["16"]["agreement"] >= doom_eval.TURN_JUDGE_MIN
    assert r["counterfactual_ratio"]["value"] == 1.0
    assert r["truth"]["counterfactual_shift_px"] > 20  # 8 turns of 5 degrees each way: the view swings apart
    assert r["switch_hist_dist"] == [0.0] * doom_eval.SWITCH_FRAMES
    assert all(v["value"] == 100.0 for v in r["window_recall_psnr"].values())
    assert r["psnr_64"] is None and r["turns"]["64"] is None  # not measured beyond --steps
    assert r["kv_bytes"] == 0 and r["model_ms_p50"] > 0
    json.dumps(r, allow_nan=False)


def test_engine_beats_both_baselines_and_meets_the_targets(engine_res):
    r = engine_res
    for b in doom_eval.BASELINES:
        base = r["baselines"][b]
        for key in ("tf_psnr", "psnr_16", "persistence_psnr_16", "switch_luma_psnr"):
            assert r[key]["value"] > base[key]["value"] + 3, (b, key)
        assert base["counterfactual_ratio"]["value"] == 0.0  # a held frame swings nowhere
        assert base["turns"]["16"]["ratio"]["value"] < 0.2
        assert base["exact_share"] == 0.0
    assert not r["baselines"]["mean_frame"]["tf_sharpness"]["sharp"]  # the mean frame is a blur
    measured = {k: t for k, t in r["targets"].items() if t["value"] is not None}
    assert {"teacher_forced_psnr", "rollout16_turn_ratio", "counterfactual_ratio", "switch_luma_psnr"} <= set(measured)
    assert all(t["met"] for t in measured.values()), [k for k, t in measured.items() if not t["met"]]
    assert not r["targets"]["rollout64_turn_ratio"]["met"]  # --steps 16: not measured, not met


def test_baselines_in_the_run_are_the_bad_models_figures(engine_res, bad):
    # copy-last and the mean frame as models score what the baselines score (same code path, one seed here)
    for name in ("copy_last", "mean_frame"):
        solo = bad[name]
        assert solo["psnr_16"]["value"] == pytest.approx(solo["baselines"][name]["psnr_16"]["value"])
        assert solo["tf_psnr"]["value"] == pytest.approx(solo["baselines"][name]["tf_psnr"]["value"])


@pytest.mark.parametrize("name", ["copy_last", "mean_frame", "mirrored"])
def test_bad_models_do_not_follow_the_keys(bad, name):
    r = bad[name]
    assert r["turns"]["16"]["ratio"]["value"] < 0.2
    assert not r["targets"]["rollout16_turn_ratio"]["met"]
    assert not r["targets"]["counterfactual_ratio"]["met"]
    assert not r["targets"]["teacher_forced_psnr"]["met"]


def test_mirrored_view_turns_the_wrong_way(bad):
    r = bad["mirrored"]
    assert r["counterfactual_ratio"]["value"] < 0
    assert r["tf_sharpness"]["sharp"]  # a mirror loses no detail: only the turn figures catch it


def test_blurred_and_mean_models_are_not_sharp(bad):
    for name in ("blurred", "mean_frame"):
        r = bad[name]
        assert not r["tf_sharpness"]["sharp"] and not r["sharpness_16"]["sharp"], name
        assert r["collapse"], name  # blurred at the end
        assert not r["targets"]["teacher_forced_sharp"]["met"] and not r["targets"]["rollout16_sharp"]["met"]
    assert bad["blurred"]["counterfactual_ratio"]["value"] > 0.5  # it does turn: the sharpness check fails it


def test_met_is_false_when_a_baseline_meets_the_bar():
    figs = {"model": {"counterfactual_ratio": {"value": 0.9}, "tf_sharpness": {"value": 1.0}},
            "copy_last": {"counterfactual_ratio": {"value": 0.6}, "tf_sharpness": {"value": 1.0}},
            "mean_frame": {"counterfactual_ratio": {"value": float("nan")}, "tf_sharpness": {"value": 0.0}}}
    cf = doom_eval.evaluate_target(doom_eval.Target("cf", ("counterfactual_ratio", "value"), ">=", bar=0.5), figs, {})
    assert cf["baselines_meeting"] == ["copy_last"] and not cf["met"]
    guard = doom_eval.Target("sharp", ("tf_sharpness", "value"), ">=", bar=0.4, guard=True)
    assert doom_eval.evaluate_target(guard, figs, {})["met"]  # a guard is the model's alone
    rel = doom_eval.Target("psnr", ("tf_sharpness", "value"), ">=", margin=0.5)
    assert doom_eval.evaluate_target(rel, figs, {})["bar"] == 1.5


def test_turn_judge_ignores_walking_turns():
    keys = [("left",), ("up", "left"), ("right",), ("down", "right"), ()]
    assert doom_eval.judged_turn_signs(keys) == [1, 0, -1, 0, 0]


def test_jsonable_turns_nan_into_null():
    assert doom_eval.jsonable({"a": float("nan"), "b": (np.float32(1.5), np.int64(2), np.bool_(True))}) == \
        {"a": None, "b": [1.5, 2, True]}


def test_window_recall_table_builds_each_window():
    built = []

    def build(window):
        built.append(window)
        return doom_engine()

    t = doom_eval.window_recall_table(build, seeds=SEEDS[:1])
    assert built == ["short", "long"]
    assert all(v["value"] == 100.0 for w in t["windows"].values() for v in w.values())
    assert t["target"]["value"] == 0.0 and not t["target"]["met"]  # the game has no window to lose


def test_gallery_of_non_square_frames(tmp_path):
    from PIL import Image

    from worldlab import gallery

    path = tmp_path / "doom.png"
    r = doom_eval.evaluate(doom_engine(), SEEDS[:1], 8, gallery_path=path)
    img = np.asarray(Image.open(path))
    h, w = 48 * gallery.SCALE, 64 * gallery.SCALE
    assert r["gallery_steps"] == [1, 8]
    assert img.shape == (gallery.HEADER_H + 2 * (h + gallery.GAP), gallery.LABEL_W + 2 * (w + gallery.GAP), 3)


def test_check_request_refuses_bad_input():
    with pytest.raises(ValueError, match="unknown DOOM map"):
        doom_eval.check_request([100_000], 16, map="nowhere")
    with pytest.raises(ValueError, match="mean-frame"):
        doom_eval.check_request([3], 16)
    with pytest.raises(ValueError, match="non-negative"):
        doom_eval.check_request([-1], 16)
    with pytest.raises(ValueError, match="the model plays map"):
        doom_eval.eval_map(doom_engine(), "defend_the_center")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "worldlab.cli", "eval", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_prints_json_and_writes_the_same_figures_to_out(tmp_path):
    from worldlab.experiments.results import load_dataset

    out = _cli("--model", "doom-engine", "--seeds", "100000", "--steps", "16", "--json", "--out",
               str(tmp_path / "doom.nc"))
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["world"] == "doom" and r["seeds"] == [100000] and r["steps"] == 16
    assert r["exact_share"] == 1.0 and r["targets"]["teacher_forced_psnr"]["met"]
    ds = load_dataset(tmp_path / "doom.nc")  # `worldlab eval --out`: the run's figures, baselines beside them
    assert list(ds.source.values) == ["model", "copy_last", "mean_frame"]
    assert ds.attrs["model"] == "doom-engine" and ds.attrs["world"] == "doom" and list(np.atleast_1d(ds.attrs["seeds"])) == [100000]
    for name in ("tf_psnr", "psnr_16", "exact_share"):
        got = ds[name].sel(source="copy_last").item()
        want = r["baselines"]["copy_last"][name]
        assert got == pytest.approx(want["value"] if isinstance(want, dict) else want)
    assert ds["tf_psnr"].sel(source="model").item() == r["tf_psnr"]["value"]
    assert ds["turn_ratio"].sel(source="copy_last", horizon=16).item() == 0.0  # copying never turns
    assert np.isnan(ds["turn_ratio"].sel(source="model", horizon=64).item())  # 16 steps: no 64-step figure
    assert ds["truth_counterfactual_shift_px"].item() == pytest.approx(r["truth"]["counterfactual_shift_px"])
    met = dict(zip(ds.target.values, ds.target_met.values))
    assert met == {k: v["met"] for k, v in r["targets"].items()}


@pytest.mark.parametrize("args, message", [
    (("--map", "nowhere"), "unknown DOOM map"),
    (("--seeds", "100000,x"), "--seeds must be comma-separated integers"),
    (("--seeds", "3"), "mean-frame"),
])
def test_cli_bad_input_is_one_line(args, message):
    out = _cli("--model", "doom-engine", "--steps", "16", "--json", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
