"""`worldlab eval --out` / `worldlab bench --out` write results files with provenance; results files are
written atomically and refused when foreign or damaged; the toggle values have one definition."""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from worldlab.config import TOGGLE_CHOICES, Toggles
from worldlab.experiments.provenance import PROVENANCE_KEYS, provenance
from worldlab.experiments.results import ResultsError, load_dataset, save_dataset, stack


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "worldlab.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_eval_out_writes_the_same_figures_it_prints(tmp_path, micro_ckpt):
    r = cli("eval", "--checkpoint", str(micro_ckpt[0]), "--seeds", "1,2", "--steps", "5", "--kv", "nvfp4", "--json",
            "--out", "e.nc", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    ds = load_dataset(tmp_path / "e.nc")
    assert set(PROVENANCE_KEYS) <= set(ds.attrs) and len(ds.attrs["checkpoint_sha256"]) == 64
    assert ds.psnr.dims == ("seed", "step") and ds.seed.values.tolist() == [1, 2] and ds.sizes["step"] == 5
    assert str(ds.kv.values) == "nvfp4" and str(ds.weights.values) == "fp32"
    for k in ("psnr_mean", "psnr_step1", "switch_psnr", "kv_bytes", "model_ms_p50"):
        assert float(ds[k]) == pytest.approx(printed[k]), k
    pooled = 10 * np.log10(255**2 / float(ds.mse.values.mean()))
    assert float(ds.psnr_mean) == pytest.approx(min(100.0, pooled))  # psnr_mean is the pooled figure
    assert (ds.frame_bytes > 0).all() and float(ds.bitrate_kbps) > 0


def test_bench_out_keeps_every_timed_step(tmp_path, micro_ckpt):
    r = cli("bench", "--checkpoint", str(micro_ckpt[0]), "--steps", "12", "--batches", "1,2", "--out", "b.nc",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ds = load_dataset(tmp_path / "b.nc")
    assert ds.sizes["sample"] == 12 and ds.batch.values.tolist() == [1, 2]
    assert float(ds.model_ms_p50) == pytest.approx(float(np.percentile(ds.model_ms, 50)))


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_out_in_a_missing_directory_fails_before_any_work(tmp_path, command):
    r = cli(command, "--out", "nowhere/r.nc", cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def small(value=1.0, **coords):
    return xr.Dataset({"y": ("i", [value, 2 * value])}, coords=coords, attrs=provenance())


def test_foreign_damaged_and_partial_files_are_refused(tmp_path):
    xr.Dataset({"y": ("i", [1.0])}).to_netcdf(tmp_path / "foreign.nc", engine="h5netcdf")
    (tmp_path / "damaged.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    for name, message in (("foreign.nc", "not a worldlab results file"), ("damaged.nc", "not a readable netCDF"),
                          ("missing.nc", "no results file")):
        with pytest.raises(ResultsError, match=message):
            load_dataset(tmp_path / name)
    with pytest.raises(ResultsError, match="provenance"):
        save_dataset(xr.Dataset({"y": ("i", [1.0])}), tmp_path / "bare.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.nc", "foreign.nc"]  # no temporary left


def test_round_trip_keeps_values_attrs_and_long_strings(tmp_path):
    ds = small(3.0, kv="nvfp4")
    ds.attrs["grid"] = {"kv": ["none", "nvfp4"]}
    save_dataset(ds, tmp_path / "a.nc")
    back = load_dataset(tmp_path / "a.nc")
    assert back.y.values.tolist() == [3.0, 6.0] and json.loads(back.attrs["grid"]) == {"kv": ["none", "nvfp4"]}
    both = stack([back, small(1.0, kv="none")], ["kv"])
    both.attrs.update(provenance())
    save_dataset(both, tmp_path / "b.nc")  # a loaded fixed-width string encoding must not truncate "nvfp4"
    assert load_dataset(tmp_path / "b.nc").kv.values.tolist() == ["nvfp4", "none"]


def test_stack_places_each_run_in_run_order_and_leaves_holes_nan():
    runs = [small(5.0, weights="w4a4", kv="nvfp4"), small(1.0, weights="fp32", kv="none")]
    ds = stack(runs, ["weights", "kv"])
    assert ds.y.dims == ("weights", "kv", "i")
    assert ds.weights.values.tolist() == ["w4a4", "fp32"] and ds.kv.values.tolist() == ["nvfp4", "none"]
    assert ds.y.sel(weights="w4a4", kv="nvfp4").values.tolist() == [5.0, 10.0]
    assert np.isnan(ds.y.sel(weights="fp32", kv="nvfp4")).all()


def test_toggle_values_have_one_definition():
    from worldlab.cli import build_parser
    from worldlab.widget.player import Player

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("eval", "bench", "serve"):
        actions = {a.dest: a for a in sub.choices[command]._actions}
        for name, allowed in TOGGLE_CHOICES.items():
            assert tuple(actions[name].choices) == allowed and actions[name].default == getattr(Toggles(), name)
    assert Player.class_traits()["toggle_choices"].default() == {k: list(v) for k, v in TOGGLE_CHOICES.items()}
    with pytest.raises(ValueError, match="kv must be one of"):
        Toggles(kv="int4")
