"""KV cache: sink + ring policy, storage bytes, Triton attention vs reference, quantization accuracy."""

import pytest
import torch

from worldlab.kernels.kv_cache import alibi_ages, make_kv_cache
from worldlab.kernels.kv_cache import reference
from tests.kernels.conftest import needs_triton

# Reference and kernel attend over identical decoded values; only summation order differs.
ATOL = {"none": 2e-6, "fp8": 2e-6, "nvfp4": 2e-6}
# Attention output SQNR vs an uncompressed cache on N(0,1) K/V (quantization error, not kernel error).
MIN_SQNR_DB = {"fp8": 25.0, "nvfp4": 14.0}
CASES = [  # (B, H, tokens/frame, D, sink, window, frames appended)
    (1, 2, 16, 32, 1, 3, 6),
    (2, 1, 5, 16, 0, 2, 3),
    (1, 2, 13, 64, 2, 4, 9),
]


def filled(kind, B, H, T, D, S, W, n, seed=0):
    torch.manual_seed(seed)
    c = make_kv_cache(kind, batch=B, heads=H, head_dim=D, tokens_per_frame=T, sink=S, window=W)
    for _ in range(n):
        c.append_frame(torch.randn(B, H, T, D), torch.randn(B, H, T, D))
    return c


def test_sink_and_window_keep_the_right_frames():
    c = filled("nvfp4", 1, 1, 4, 16, 2, 3, 10)
    assert c.frame_ids() == [0, 1, 7, 8, 9]
    c.reset()
    assert c.frame_ids() == []
    c.append_frame(torch.ones(1, 1, 4, 16), torch.ones(1, 1, 4, 16), frame_id=100)
    assert c.frame_ids() == [100]


def test_memory_is_flat_over_many_frames():
    c = filled("nvfp4", 1, 2, 8, 32, 1, 4, 5)
    before = c.kv_bytes()
    for _ in range(200):
        c.append_frame(torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32))
    assert c.kv_bytes() == before and len(c.frame_ids()) == 5


@pytest.mark.parametrize("kind, ratio", [("nvfp4", 0.29), ("fp8", 0.51)])
def test_bytes_per_element_vs_bf16_at_window_12(kind, ratio):
    c = make_kv_cache(kind, batch=1, heads=4, head_dim=64, tokens_per_frame=64, sink=1, window=12)
    bf16 = c.elements() * 2
    assert c.kv_bytes() / bf16 <= ratio
    assert c.kv_bytes() / c.elements() >= (0.5625 if kind == "nvfp4" else 1.0)  # no under-counting


def test_alibi_ages_put_the_sink_before_the_window():
    k = torch.tensor([0, 1, 7, 8, 9])
    ages = alibi_ages(torch.tensor(9), k, sink=2, window=3)
    assert ages.tolist() == [4, 3, 2, 1, 0]  # sink at positions 0,1; window at 2..4; query at 4


def test_bias_changes_attention_and_empty_slots_are_ignored():
    c = filled("none", 1, 1, 4, 16, 1, 3, 2)  # 2 of 4 slots used
    q = torch.randn(1, 1, 4, 16)
    flat = c.attend(q)
    steep = c.attend(q, slopes=torch.tensor([50.0]))
    k, v = c.decoded("k")[0, 0, :2].reshape(8, 16), c.decoded("v")[0, 0, :2].reshape(8, 16)
    want = torch.softmax(q[0, 0] @ k.t() / 4.0, -1) @ v
    assert torch.allclose(flat[0, 0], want, atol=1e-6)
    # A steep slope leaves only the newest frame (frame 1 = slot 1) in play.
    v_new = c.decoded("v")[0, 0, 1]
    want_new = torch.softmax(q[0, 0] @ c.decoded("k")[0, 0, 1].t() / 4.0, -1) @ v_new
    assert torch.allclose(steep[0, 0], want_new, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("kind", ["none", "fp8", "nvfp4"])
@pytest.mark.parametrize("case", CASES)
def test_triton_attention_matches_reference(kind, case):
    from worldlab.kernels.kv_cache import triton_kernels

    B, H, T, D, S, W, n = case
    c = filled(kind, *case)
    q = torch.randn(B, H, T, D)
    slopes = torch.tensor([0.5, 0.25][:H])
    for sl in (None, slopes):
        ref = reference.attend(c, q, c.last_frame, sl)
        tri = triton_kernels.attend(c, q, c.last_frame, sl)
        assert (ref - tri).abs().max().item() <= ATOL[kind]


@pytest.mark.parametrize("kind", ["fp8", "nvfp4"])
def test_compressed_attention_accuracy(kind):
    case = (1, 2, 16, 64, 1, 6, 10)
    exact, comp = filled("none", *case, seed=3), filled(kind, *case, seed=3)
    q = torch.randn(1, 2, 16, 64)
    a, b = exact.attend(q), comp.attend(q)
    assert float(10 * torch.log10(a.pow(2).sum() / (a - b).pow(2).sum())) >= MIN_SQNR_DB[kind]


@pytest.mark.parametrize("call, match", [
    (lambda: make_kv_cache("int2", batch=1, heads=1, head_dim=16, tokens_per_frame=1, sink=0, window=1), "kind"),
    (lambda: make_kv_cache("nvfp4", batch=1, heads=1, head_dim=24, tokens_per_frame=1, sink=0, window=1), "head_dim"),
    (lambda: make_kv_cache("none", batch=1, heads=1, head_dim=16, tokens_per_frame=1, sink=0, window=0), "window"),
    (lambda: filled("none", 1, 1, 2, 16, 0, 2, 1).append_frame(torch.ones(1, 1, 3, 16), torch.ones(1, 1, 3, 16)), r"k must have shape \(1, 1, 2, 16\)"),
    (lambda: filled("none", 1, 1, 2, 16, 0, 2, 2).append_frame(torch.ones(1, 1, 2, 16), torch.ones(1, 1, 2, 16), frame_id=1), "frame_id must increase"),
    (lambda: filled("fp8", 1, 1, 2, 16, 0, 2, 1).append_frame(torch.ones(1, 1, 2, 16), torch.full((1, 1, 2, 16), float("nan"))), "v contains"),
    (lambda: make_kv_cache("none", batch=1, heads=1, head_dim=16, tokens_per_frame=1, sink=0, window=1).attend(torch.ones(1, 1, 1, 16)), "empty cache"),
    (lambda: filled("none", 1, 2, 2, 16, 0, 2, 1).attend(torch.ones(1, 2, 1, 16), slopes=torch.ones(3)), "slopes"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@needs_triton
@pytest.mark.parametrize("kind", ["fp8", "nvfp4"])
@pytest.mark.parametrize("case", CASES)
def test_writes_go_through_the_dispatched_quantizers(kind, case, monkeypatch):
    """The cache compresses on write with whichever backend dispatch picks: the Triton quantizers (as on
    CUDA; interpreted here) store exactly the bytes of the reference, and are the ones called."""
    import worldlab.kernels.fp8 as fp8_mod
    import worldlab.kernels.nvfp4 as nvfp4_mod
    from worldlab.kernels.dispatch import implementation

    used = []

    def spy(kernel, x=None):
        module = implementation(kernel, x)
        used.append(module.__name__)
        return module

    for mod in (fp8_mod, nvfp4_mod):
        monkeypatch.setattr(mod, "implementation", spy)
    stored = {}
    for impl in ("reference", "triton"):
        monkeypatch.setenv("WORLDLAB_KERNELS", impl)
        used.clear()
        c = filled(kind, *case, seed=11)
        stored[impl] = [t.clone() for side in ("k", "v") for t in c.store[side]]
        assert used == [f"worldlab.kernels.{kind}.{'triton_kernels' if impl == 'triton' else 'reference'}"] * (2 * case[-1])
    assert all(torch.equal(a, b) for a, b in zip(stored["reference"], stored["triton"]))


@needs_triton
@pytest.mark.parametrize("kind", ["none", "fp8", "nvfp4"])
@pytest.mark.parametrize("case", CASES)
def test_graph_safe_write_and_attend_equal_the_checked_ones(kind, case):
    """write_at/attend_at take slot and frame as device tensors (what a CUDA graph replays with this tick's
    values): same stored bytes and, on both backends, the same attention as append_frame/attend, ring wrap
    included."""
    from worldlab.kernels.kv_cache import triton_kernels

    B, H, T, D, S, W, n = case
    a = filled(kind, *case, seed=5)
    b = make_kv_cache(kind, batch=B, heads=H, head_dim=D, tokens_per_frame=T, sink=S, window=W)
    torch.manual_seed(5)
    for f in range(n):
        k, v = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
        b.write_at(k, v, torch.tensor([b.slot_for(f)]), torch.tensor([f]))
        b.note_frame(f)
    assert torch.equal(a.frame_id, b.frame_id) and b.last_frame == a.last_frame == n - 1
    for name in ("k", "v"):
        assert all(torch.equal(x, y) for x, y in zip(a.store[name], b.store[name]))
    q, slopes = torch.randn(B, H, T, D), torch.tensor([0.5, 0.25][:H])
    qf = torch.tensor([n - 1])
    assert torch.equal(a.attend(q, n - 1, slopes), b.attend_at(q, qf, slopes))
    assert (triton_kernels.attend(a, q, n - 1, slopes) - triton_kernels.attend(b, q, qf, slopes)).abs().max() == 0
