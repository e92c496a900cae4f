"""The cost model's formulas against hand-computed values, whole-GPU packing across concurrency, and
one-line errors for bad input (no price defaults: prices must be given)."""

import math

import pytest

from worldlab.experiments.cost import (Overheads, Prices, compute_minutes, cost_table, egress_gb, gpus_needed,
                                       session_hour_cost)

PRICES = Prices(gpu_usd_per_hour=2.0, egress_usd_per_gb=0.08, relay_premium_usd_per_gb=0.1)  # test numbers only
OVER = Overheads(idle_headroom=0.2, cold_starts_per_gpu_hour=1.0, cold_start_s=60.0, relay_pct=20.0)


def test_compute_minutes_and_egress_by_hand():
    # 30 fps for 10 min at 8 ms/frame on a GPU kept 50 % busy: 18000 frames x 8 ms = 144 s busy -> 288 s = 4.8 min
    assert compute_minutes(30, 600, 8.0, 0.5) == pytest.approx(4.8)
    assert compute_minutes(30, 600, 8.0, 1.0) == pytest.approx(2.4)
    # 2 Mbit/s for one hour to 3 viewers: 7200 Mbit = 900 MB -> 0.87890625 GB each
    assert egress_gb(2.0, 3600, viewers=3) == pytest.approx(3 * 900 / 1024)
    assert egress_gb(0.0, 3600) == 0.0


def test_gpus_round_up_to_whole_gpus():
    # one session at 30 fps x 10 ms / 0.6 utilization keeps 0.5 GPU busy
    assert gpus_needed(1, 30, 10.0, 0.6) == 1
    assert gpus_needed(2, 30, 10.0, 0.6) == 1
    assert gpus_needed(3, 30, 10.0, 0.6) == 2
    assert gpus_needed(4, 30, 10.0, 0.6) == 2
    assert gpus_needed(5, 30, 10.0, 0.6) == 3


def test_session_hour_cost_terms_by_hand():
    row = session_hour_cost(1, fps=30, ms_per_frame=3.0, bitrate_kbps=250, utilization=0.7, prices=PRICES,
                            overheads=OVER)
    gb = 0.25 * 3600 / 8 / 1024
    assert row["gpus"] == 1
    assert row["compute_usd"] == pytest.approx(2.0)
    assert row["egress_usd"] == pytest.approx(gb * 0.08)
    assert row["headroom_usd"] == pytest.approx(0.2 * 2.0)
    assert row["cold_start_usd"] == pytest.approx(60 / 3600 * 2.0)
    assert row["relay_usd"] == pytest.approx(0.2 * gb * 0.1)
    assert row["total_usd"] == pytest.approx(2.0 + gb * 0.08 + 0.4 + 60 / 3600 * 2.0 + 0.2 * gb * 0.1)


def test_cost_table_shares_gpus_and_tends_to_the_fluid_cost():
    presets = {"low": {"ms_per_frame": 3.0, "bitrate_kbps": 250}, "high": {"ms_per_frame": 3.0, "bitrate_kbps": 800}}
    ds = cost_table(presets, [1, 2, 8, 64, 4096], fps=30, utilization=0.7, prices=PRICES)
    assert ds["total_usd"].dims == ("preset", "concurrency")
    total = ds["total_usd"].sel(preset="low").values
    assert total[0] > total[1] > total[-1]  # one GPU shared by more sessions
    assert (ds["fleet_usd_per_hour"].diff("concurrency") >= 0).all()  # more sessions never cost less in all
    fluid = compute_minutes(30, 3600, 3.0, 0.7) / 60 * 2.0  # GPU-hours per session-hour x price
    compute = ds["compute_usd"].sel(preset="low").values
    assert compute[-1] == pytest.approx(fluid, rel=0.01) and (compute >= fluid - 1e-12).all()
    assert (ds["total_usd"].sel(preset="high") > ds["total_usd"].sel(preset="low")).all()  # more bits, same GPU
    assert ds["gpus"].sel(preset="low", concurrency=64) == math.ceil(64 * 30 * 3.0 / 1000 / 0.7)


@pytest.mark.parametrize("call, message", [
    (lambda: compute_minutes(30, 60, 5, 0), "utilization"),
    (lambda: compute_minutes(30, 60, 5, 1.5), "utilization"),
    (lambda: compute_minutes(-30, 60, 5, 0.5), "fps"),
    (lambda: compute_minutes(30, 60, float("nan"), 0.5), "ms_per_frame"),
    (lambda: egress_gb(-1, 60), "bitrate_mbps"),
    (lambda: egress_gb(1, 60, viewers=0), "viewers"),
    (lambda: Prices(gpu_usd_per_hour=-1, egress_usd_per_gb=0.1), "gpu_usd_per_hour"),
    (lambda: Overheads(relay_pct=150), "relay_pct"),
    (lambda: gpus_needed(0, 30, 5, 0.5), "concurrency"),
    (lambda: cost_table({}, [1], fps=30, utilization=0.5, prices=PRICES), "presets"),
    (lambda: cost_table({"x": {"ms_per_frame": 1}}, [1], fps=30, utilization=0.5, prices=PRICES), "preset 'x'"),
    (lambda: cost_table({"x": {"ms_per_frame": 1, "bitrate_kbps": 1}}, [], fps=30, utilization=0.5,
                        prices=PRICES), "concurrency"),
])
def test_bad_input_is_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as exc:
        call()
    assert "\n" not in str(exc.value)


def test_prices_have_no_defaults():
    with pytest.raises(TypeError):
        Prices()
