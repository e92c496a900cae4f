"""NVFP4 quantize/dequantize: pinned vectors from DESIGN.md, reference vs Triton bit-exactness, bad input."""

import json
import pathlib

import pytest
import torch
from hypothesis import given, settings, strategies as st

from worldlab.kernels import nvfp4
from worldlab.kernels.nvfp4 import format as fmt, reference
from tests.kernels.conftest import AWKWARD_SHAPES, needs_triton

VECTORS = json.loads((pathlib.Path(__file__).parent / "data" / "nvfp4_vectors.json").read_text())


def hexbytes(t: torch.Tensor) -> str:
    return t.contiguous().numpy().tobytes().hex()


def test_pack_vectors():
    rows = VECTORS["pack_only"]["codes_rows"]
    for row, want in zip(rows, VECTORS["pack_only"]["packed_hex_rows"]):
        codes = fmt.e2m1_encode(torch.tensor(row, dtype=torch.float32))
        assert hexbytes(fmt.pack_codes(codes)) == want
        assert torch.equal(fmt.unpack_codes(fmt.pack_codes(codes)), codes)


def test_single_level_block_ties_to_even():
    case = VECTORS["single_level_block"]
    t = nvfp4.quantize(torch.tensor([case["input"]]), per_tensor_scale=case["per_tensor_scale"])
    assert hexbytes(t.packed) == case["packed_hex"] == "002244668f673d81"
    assert hexbytes(t.scales) == case["scales_hex"] == "38"


@pytest.mark.parametrize("name", sorted(VECTORS["cases"]))
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_two_level_cases_match_nvidia_bytes(name, impl, monkeypatch):
    if impl == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv("WORLDLAB_KERNELS", impl)
    case = VECTORS["cases"][name]
    x = torch.tensor(case["input"], dtype=torch.float32)
    t = nvfp4.quantize(x)
    assert float(t.per_tensor_scale) == case["per_tensor_scale"]
    assert hexbytes(t.packed) == case["packed_hex"]
    assert hexbytes(t.scales) == case["scales_hex"]


def test_zero_block_scale_byte():
    x = torch.zeros(2, 32)
    x[1, 16:] = torch.linspace(-3, 3, 16)
    t = nvfp4.quantize(x)
    assert t.scales[0].tolist() == [0x08, 0x08] and t.scales[1, 0].item() == 0x08
    assert torch.equal(nvfp4.dequantize(t)[0], torch.zeros(32))


def test_all_zero_tensor_round_trips_to_zero():
    t = nvfp4.quantize(torch.zeros(3, 16))
    assert float(t.per_tensor_scale) == 1.0
    assert torch.equal(nvfp4.dequantize(t), torch.zeros(3, 16))


@needs_triton
@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_quantize_is_bit_exact(shape, dtype):
    from worldlab.kernels.nvfp4 import triton_kernels

    torch.manual_seed(sum(shape))
    x = (torch.randn(*shape) * torch.logspace(-3, 2, shape[-1])).to(dtype)  # many block magnitudes
    pts = reference.per_tensor_scale(x)
    p_ref, s_ref = reference.quantize(x, pts)
    p_tri, s_tri = triton_kernels.quantize(x, pts)
    assert torch.equal(p_ref, p_tri) and torch.equal(s_ref, s_tri)
    assert torch.equal(reference.dequantize(p_ref, s_ref, pts), triton_kernels.dequantize(p_tri, s_tri, pts))


def sqnr_db(x, y):
    return float(10 * torch.log10(x.pow(2).sum() / (x - y).pow(2).sum()))


def test_round_trip_sqnr_on_gaussian():
    torch.manual_seed(0)
    x = torch.randn(256, 1024)
    # DESIGN.md: about 20.4 dB on N(0,1); a regression in rounding or scale choice drops it by > 0.5 dB.
    assert 20.0 <= sqnr_db(x, nvfp4.dequantize(nvfp4.quantize(x))) <= 21.0


def test_storage_is_0_5625_bytes_per_element():
    t = nvfp4.quantize(torch.randn(64, 1024))
    assert (t.packed.numel() + t.scales.numel()) / (64 * 1024) == fmt.BYTES_PER_ELEMENT == 0.5625


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=16, max_size=16),
       st.integers(1, 3))
def test_requantizing_dequantized_values_is_idempotent(values, reps):
    x = torch.tensor([values] * reps, dtype=torch.float32)
    t = nvfp4.quantize(x)
    t2 = nvfp4.quantize(nvfp4.dequantize(t), per_tensor_scale=t.per_tensor_scale)
    assert torch.equal(t.packed, t2.packed)
    # Signs survive (a value may round to a signed zero, never to the opposite sign).
    assert bool(((torch.sign(nvfp4.dequantize(t)) * torch.sign(x)) >= 0).all())


def test_a_tensor_of_one_subnormal_quantizes_to_finite_values_not_nan():
    """The example hypothesis found: amax / 2688 underflowed to 0 and the block scale divided by it."""
    x = torch.tensor([[0.0] * 15 + [1.401298464324817e-45]])
    t = nvfp4.quantize(x)
    assert float(t.per_tensor_scale) == torch.finfo(torch.float32).tiny
    y = nvfp4.dequantize(t)
    assert bool(torch.isfinite(y).all()) and float((y - x).abs().max()) < torch.finfo(torch.float32).tiny
    assert torch.equal(nvfp4.quantize(y, per_tensor_scale=t.per_tensor_scale).packed, t.packed)


@pytest.mark.parametrize("bad, match", [
    (torch.ones(4, 16, dtype=torch.int32), "x must be float32"),
    (torch.ones(4, 20), r"x.shape\[-1\] = 20 must be a multiple of 16"),
    (torch.empty(0, 16), "x is empty"),
    (torch.tensor([[float("nan")] + [0.0] * 15]), "x contains 1 NaN/Inf"),
    (torch.tensor([[float("inf")] * 16]), "x contains 16 NaN/Inf"),
    ([1.0] * 16, "x must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        nvfp4.quantize(bad)


@pytest.mark.parametrize("pts", [0.0, -1.0, float("nan"), [1.0, 2.0]])
def test_bad_per_tensor_scale(pts):
    with pytest.raises(ValueError, match="per_tensor_scale"):
        nvfp4.quantize(torch.ones(1, 16), per_tensor_scale=pts)


def test_dispatch_rejects_unknown_mode(monkeypatch):
    monkeypatch.setenv("WORLDLAB_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="WORLDLAB_KERNELS must be one of"):
        nvfp4.quantize(torch.ones(1, 16))


def test_lut_tables_pin_special_values():
    lut = fmt.e2m1_lut()
    assert lut.tolist() == [0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6]
    e4 = fmt.e4m3_lut()
    assert e4[0x38] == 1.0 and e4[0x08] == 2.0**-6 and e4[0x7E] == 448.0 and e4[0x01] == 2.0**-9
    assert torch.isnan(e4[0x7F]) and torch.isnan(e4[0xFF]) and e4[0xB8] == -1.0


@needs_triton
@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
def test_triton_per_row_scales_are_bit_exact(shape):
    """quantize_rows (the KV cache's one scale per row): Triton == reference, zero rows included."""
    from worldlab.kernels.nvfp4 import triton_kernels

    torch.manual_seed(7 + sum(shape))
    x = torch.randn(*shape) * torch.logspace(-2, 2, shape[-1])
    x.reshape(-1, shape[-1])[::3] = 0.0  # every third row is empty: its scale is 1, its codes 0
    amax = x.abs().amax(dim=-1, keepdim=True)
    rows = torch.where(amax > 0, amax / 2688.0, torch.ones_like(amax))  # (..., 1)
    p_ref, s_ref = reference.quantize(x, rows)
    p_tri, s_tri = triton_kernels.quantize(x, rows)
    assert torch.equal(p_ref, p_tri) and torch.equal(s_ref, s_tri)
    assert torch.equal(reference.dequantize(p_ref, s_ref, rows), reference.dequantize(p_tri, s_tri, rows))


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.tensor([1.0, float("nan"), 1.0])])
def test_quantize_rows_refuses_bad_scales(bad):
    with pytest.raises(ValueError, match="row_scales must be finite and > 0"):
        nvfp4.quantize_rows(torch.ones(3, 16), bad)
