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


@pytest.fixture(scope="session")
def micro_age_ckpt(tmp_path_factory):
    """A micro model with Fourier coordinates and value-age rotation on (a few steps: only the paths matter)."""
    import dataclasses

    from worldlab.threads import for_training
    from worldlab.train import train

    for_training()
    cfg = dataclasses.replace(preset("micro"), coord_fourier=(64, 16, 4), value_age_periods=(64, 16, 8, 4),
                              hide_objects=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "micro_age.safetensors"
    summary = train(cfg, path, progress=False, log_every=1, steps=40)
    return path, summary


@pytest.mark.parametrize("window", ["short", "long"])
@pytest.mark.parametrize("ckpt", ["micro_ckpt", "micro_age_ckpt"])
def test_streaming_steps_match_the_parallel_training_pass(request, ckpt, window):
    # The cache path (append + attend with ALiBi ages, ring eviction; with value-age rotation, values turned
    # by the key's clock and outputs by minus the query's) must compute exactly what training computed;
    # 24 frames make the long window's ring wrap too.
    m = load_model(request.getfixturevalue(ckpt)[0], window=window)
    acts = env.random_actions(23, seed=11)
    frames = env.rollout(11, "snow", acts)  # 24 frames
    obs = m.net.codec.tokenize(torch.from_numpy(frames))  # (24, 3, 4)
    a = torch.tensor([[env.action_id(k) for k in acts] + [4]])
    th = torch.full_like(a, env.THEMES.index("snow"))
    with torch.no_grad():
        par = m.net.forward_seq(obs[None], a, th, m.window)[0]  # (24, 3, 2, P) logits
    s = m.init_state("snow")
    m.prefill(s, frames[:2], acts[:1])
    for t in range(1, 24):
        s.next_id = t  # teacher forcing through the streaming path
        out = m._advance([s], obs[t][None], a[:, t], th[:, t])
        s.history[t] = (obs[t], int(a[0, t]))
        m._evict(s)
        assert torch.allclose(out[0], par[t], atol=1e-4), f"frame {t}"


def test_batched_step_equals_sequential_steps(micro_ckpt):
    m = load_model(micro_ckpt[0])
    batch = [start_session(m, p, seed=i) for i, p in enumerate(["forest", "snow", "night"])]
    alone = [start_session(m, p, seed=i) for i, p in enumerate(["forest", "snow", "night"])]
    acts = [["up"], ["left", "down"], []]
    for _ in range(5):
        got = m.step(batch, acts)
        want = np.stack([m.step([s], [a])[0] for s, a in zip(alone, acts)])
        assert np.array_equal(got, want)  # positions are argmaxes: batching must not move a sprite


def test_memory_is_flat_over_long_rollouts(micro_ckpt):
    m = load_model(micro_ckpt[0], kv="nvfp4")
    s = start_session(m, "desert", seed=2)
    sizes = []
    for i in range(120):  # many windows' worth of frames; the ring wraps many times
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


@pytest.mark.parametrize("weights, kv", [("w8a8", "fp8"), ("w4a4", "nvfp4")])
def test_quantized_variants_stay_close_to_fp32(micro_ckpt, weights, kv):
    ref, q = load_model(micro_ckpt[0]), load_model(micro_ckpt[0], weights=weights, kv=kv)
    s_ref, s_q = start_session(ref, "night", seed=1), start_session(q, "night", seed=1)
    a = ref.step([s_ref], [["right"]])[0]
    b = q.step([s_q], [["right"]])[0]
    assert (a != b).any(-1).mean() <= 0.02  # at most a sprite's worth of pixels differs after one step
    assert q.kv_bytes(s_q) < ref.kv_bytes(s_ref) / (3 if kv == "fp8" else 6)


def test_wrong_shape_checkpoint_is_named(tmp_path, micro_ckpt):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    tensors = load_file(str(micro_ckpt[0]))
    with safe_open(str(micro_ckpt[0]), "pt") as f:
        meta = f.metadata()
    tensors["head.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ValueError, match=r"tensor 'head.weight' has shape \(3, 3\)"):
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


def test_saving_the_same_model_writes_the_same_bytes(tmp_path, micro_ckpt):
    # Several safetensors metadata keys come out in a random order per write, so the file hash (results'
    # provenance, the sweep cache key) would vary; one key makes it a function of the weights.
    from worldlab.model import checkpoint as ckpt

    net, calib, extra, digest = ckpt.load(micro_ckpt[0])
    hashes = {ckpt.save(tmp_path / f"again{i}.safetensors", net, calib, {"steps": 3, "seed": 0}) for i in range(8)}
    assert len(hashes) == 1
    again = load_model(tmp_path / "again0.safetensors")  # and the single-key layout loads back
    assert again.cfg == net.cfg
    assert ckpt.load(tmp_path / "again0.safetensors")[2] == {"steps": 3, "seed": 0}


@pytest.mark.parametrize("kv", ["none", "fp8", "nvfp4"])
def test_value_age_rotation_rebuild_matches_the_streamed_cache(micro_age_ckpt, kv):
    # Streamed frames (the ring wrapped) and a parallel rebuild (prefill / recache) store the same rotated
    # values, whatever the KV storage; the sink frame's rotated channels are zero in both. Layer 0 only:
    # a deeper layer's K/V of an old frame were streamed while evicted frames were still visible to it.
    m = load_model(micro_age_ckpt[0], window="short", kv=kv)
    assert m.cfg.value_age_periods and m.cfg.coord_fourier
    s = start_session(m, "forest", seed=3)
    for i in range(20):
        m.step([s], [env.ACTION_KEYS[i % 9]])
    streamed = [(c.decoded("k").clone(), c.decoded("v").clone(), c.frame_ids()) for c in s.caches]
    m.recache(s, "a forest path")  # same theme: the rebuild must reproduce the streamed cache
    n = 2 * len(m.cfg.value_age_periods)
    tol = 1e-4 if kv == "none" else 0.2
    for layer, ((k0, v0, ids0), c) in enumerate(zip(streamed, s.caches)):
        assert c.frame_ids() == ids0
        assert torch.all(c.decoded("v")[:, :, c.slot_for(0), :, -n:] == 0)
        assert torch.all(v0[:, :, c.slot_for(0), :, -n:] == 0)
        if layer == 0:
            assert (k0 - c.decoded("k")).abs().max() <= tol * max(1.0, k0.abs().max())
            assert (v0 - c.decoded("v")).abs().max() <= tol * max(1.0, v0.abs().max())
    got = m.step([s], [["up"]])  # and it keeps stepping
    assert got.shape == (1, 64, 64, 3)


def test_value_age_and_fourier_fields_default_off_and_old_checkpoints_load(micro_ckpt):
    from worldlab.config import ModelConfig
    from worldlab.model.transformer import WorldTransformer, age_angles, rotate_tail

    cfg = preset("tiny")
    assert cfg.coord_fourier == () and cfg.value_age_periods == ()
    assert set(WorldTransformer(cfg).state_dict()) == set(WorldTransformer(ModelConfig()).state_dict())
    m = load_model(micro_ckpt[0])  # written without the fields: loads, no rotation, no Fourier projection
    assert m.net.age_rotation(torch.zeros(1, 2, dtype=torch.long), torch.arange(2)) is None
    assert not hasattr(m.net, "coord_proj")
    # Un-rotating by the query clock leaves exactly the relative age, for any absolute frame id.
    periods = torch.tensor([64, 8, 4])
    v = torch.randn(5, 10)
    for q, k in ((9, 3), (1_000_003, 999_997)):
        ck, sk = age_angles(torch.tensor(k), periods)
        cq, sq = age_angles(torch.tensor(q), periods)
        ca, sa = age_angles(torch.tensor(q - k), periods)
        assert torch.allclose(rotate_tail(rotate_tail(v, ck, sk), cq, -sq), rotate_tail(v, ca, -sa), atol=1e-5)
    with pytest.raises(ValueError, match="value_age_periods"):
        ModelConfig(d_model=64, n_heads=4, value_age_periods=tuple(range(1, 10)))


@pytest.mark.parametrize("bad", [(6,), (6, 16, 32), (0, 16), (6, True), (6.0, 16)])
def test_train_windows_must_be_two_positive_integers(bad):
    from worldlab.config import ModelConfig

    with pytest.raises(ValueError, match="train_windows"):
        ModelConfig(train_windows=bad)


def test_the_shipped_checkpoint_trains_at_6_and_16_and_serves_a_short_window_of_4():
    m = load_model()
    assert (m.cfg.train_windows, m.cfg.window("short"), m.cfg.window("long")) == ((6, 16), 4, 16)
