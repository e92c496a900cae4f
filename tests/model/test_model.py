"""The world model: streaming equals the parallel pass, batching equals sequential, flat memory,
recache, quantized variants, checkpoints and bad input."""

import json

import numpy as np
import pytest
import torch

from worldlab import env
from worldlab.config import preset
from worldlab.model import WorldModel, load_model, start_session


def test_training_lowers_the_loss_and_logs_metrics(micro_ckpt):
    path, summary = micro_ckpt
    log = [json.loads(line) for line in open(path.with_suffix(".metrics.jsonl"))]
    assert len(log) == summary["steps_done"] == preset("micro").steps
    teacher_forced = [r["loss"] for r in log if not r["self_forcing"]]  # self-forced inputs are harder
    assert any(r["self_forcing"] for r in log)
    first, last = np.mean(teacher_forced[:8]), np.mean(teacher_forced[-8:])
    assert last < 0.7 * first


def test_protocol_is_implemented(micro_ckpt):
    assert isinstance(load_model(micro_ckpt[0]), WorldModel)


@pytest.mark.parametrize("window", ["short", "long"])
def test_streaming_steps_match_the_parallel_training_pass(micro_ckpt, window):
    # The cache path (append + attend with ALiBi ages) must compute exactly what training computed.
    m = load_model(micro_ckpt[0], window=window)
    acts = env.random_actions(12, seed=11)
    frames = env.rollout(11, "snow", acts)  # 13 frames
    x = torch.from_numpy(frames).float()[None] / 255.0
    a = torch.tensor([[env.action_id(k) for k in acts] + [4]])
    th = torch.full_like(a, env.THEMES.index("snow"))
    with torch.no_grad():
        par = m.net.forward_seq(x, a, th, m.window)[0]  # (13, 64, 64, K) logits
    s = m.init_state("snow")
    m.prefill(s, frames[:2], acts[:1])
    for t in range(1, 12):
        s.last = x[0, t]  # teacher forcing through the streaming path
        s.next_id = t
        out = m._advance([s], x[:, t], x[:, t - 1], torch.tensor([a[0, t]]), th[:, t])
        s.history[t] = (x[0, t], int(a[0, t]), x[0, t - 1])
        m._evict(s)
        assert torch.allclose(out[0], par[t], atol=2e-5), f"frame {t}"


def test_batched_step_equals_sequential_steps(micro_ckpt):
    m = load_model(micro_ckpt[0])
    batch = [start_session(m, p, seed=i) for i, p in enumerate(["forest", "snow", "night"])]
    alone = [start_session(m, p, seed=i) for i, p in enumerate(["forest", "snow", "night"])]
    acts = [["up"], ["left", "down"], []]
    for _ in range(5):
        got = m.step(batch, acts)
        want = np.stack([m.step([s], [a])[0] for s, a in zip(alone, acts)])
        assert np.abs(got.astype(int) - want).max() <= 1  # rounding to uint8 may flip one level


def test_memory_is_flat_over_long_rollouts(micro_ckpt):
    m = load_model(micro_ckpt[0], kv="nvfp4")
    s = start_session(m, "desert", seed=2)
    sizes = []
    for i in range(120):  # 20 windows' worth of frames; the ring wraps many times
        m.step([s], [env.ACTION_KEYS[i % 9]])
        if i % 40 == 39:
            sizes.append((m.kv_bytes(s), len(s.history), len(s.caches[0].frame_ids())))
    assert len(set(sizes)) == 1
    assert sizes[0][2] == m.cfg.sink + m.window


def test_recache_switches_conditioning_and_keeps_frames(micro_ckpt):
    m = load_model(micro_ckpt[0])
    s = start_session(m, "forest", seed=4)
    for _ in range(6):
        m.step([s], [[]])
    ids_before = s.caches[0].frame_ids()
    k_before = s.caches[0].decoded("k").clone()
    m.recache(s, "a snowy evening")
    assert s.theme == "snow" and s.caches[0].frame_ids() == ids_before
    assert not torch.allclose(k_before, s.caches[0].decoded("k"))  # KV recomputed under the new prompt


@pytest.mark.parametrize("weights, kv, max_mean_abs", [
    ("w8a8", "fp8", 3.0),  # 8-bit: a few uint8 levels at most on average
    ("w4a4", "nvfp4", 12.0),  # 4-bit: visibly noisier, still the same picture
])
def test_quantized_variants_stay_close_to_fp32(micro_ckpt, weights, kv, max_mean_abs):
    ref, q = load_model(micro_ckpt[0]), load_model(micro_ckpt[0], weights=weights, kv=kv)
    s_ref, s_q = start_session(ref, "night", seed=1), start_session(q, "night", seed=1)
    a = ref.step([s_ref], [["right"]])[0].astype(int)
    b = q.step([s_q], [["right"]])[0].astype(int)
    assert np.abs(a - b).mean() <= max_mean_abs
    assert q.kv_bytes(s_q) < ref.kv_bytes(s_ref) / (3 if kv == "fp8" else 6)


def test_wrong_shape_checkpoint_is_named(tmp_path, micro_ckpt):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    tensors = load_file(str(micro_ckpt[0]))
    with safe_open(str(micro_ckpt[0]), "pt") as f:
        meta = f.metadata()
    tensors["pos"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ValueError, match=r"tensor 'pos' has shape \(3, 3\)"):
        load_model(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(junk)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing.safetensors")


def test_bad_inputs_leave_other_sessions_running(micro_ckpt):
    m = load_model(micro_ckpt[0])
    good = start_session(m, "forest", seed=1)
    with pytest.raises(ValueError, match="unknown key 'jump'"):
        m.step([good], [["jump"]])
    with pytest.raises(ValueError, match="prompt is empty"):
        m.init_state("   ")
    with pytest.raises(ValueError, match="limit is 500"):
        m.recache(good, "x" * 10_000)
    with pytest.raises(ValueError, match="step before prefill"):
        m.step([m.init_state("forest")], [[]])
    with pytest.raises(ValueError, match="weights must be one of"):
        load_model(micro_ckpt[0], weights="int3")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    assert m.step([good], [["up"]]).shape == (1, 64, 64, 3)  # the good session is untouched


def test_anchor_snaps_to_the_theme_palette(micro_ckpt):
    m = load_model(micro_ckpt[0], anchor_every=2)
    s = start_session(m, "desert", seed=3)
    m.step([s], [[]])
    m.step([s], [[]])  # anchors here
    last = (s.last.numpy() * 255).round().astype(np.uint8)
    pal = {tuple(c) for c in env.palette("desert")}
    assert {tuple(p) for p in last.reshape(-1, 3)} <= pal
