"""The DOOM model's two learned helpers on small nets: the latent sampler (flow matching learns a known
conditional target; a batch of sessions equals them stepped one by one; a session's draws repeat with its seed)
and the style grade (learns a pair's colour mapping; a recache redraws the newest frame in the new look), and
a checkpoint carries both."""

import numpy as np
import pytest
import torch

from worldlab import doom
from worldlab.model.doom.grade import GradeConfig, StyleGrade, train_grade
from worldlab.model.doom.sampler import LatentSampler, SamplerConfig
from worldlab.model.doom.dynamics import DoomDynamics
from worldlab.model.doom.tokenizer import DoomTokenizer
from worldlab.model.doom.world_model import DoomWorldModel

from .test_doom_model import CFG, KEYS, _frames

SCFG = SamplerConfig(d_model=CFG.d_model, channels=16, blocks=1, sample_steps=4)


def _model(sampler=True, grade=None, seed=0) -> DoomWorldModel:
    torch.manual_seed(seed)
    net, tok = DoomDynamics(CFG), DoomTokenizer()
    s = None
    if sampler:
        s = LatentSampler(SCFG)
        with torch.no_grad():  # the zero-initialised output would make every draw its noise: give it a velocity
            s.out.weight.normal_(0, 0.05)
    with torch.no_grad():
        net.head.weight.mul_(20)  # a visible flow and a mixed keep map, so the generated pixels show in the frame
    return DoomWorldModel(net, tok, window="long", sampler=s, grade=grade)


def test_flow_matching_learns_a_target_that_depends_on_the_condition():
    """Two conditions, each with its own fixed latent grid: after training, 4 Euler steps from noise land on the
    condition's own target (and not on the other's or their mean)."""
    torch.manual_seed(0)
    s = LatentSampler(SamplerConfig(d_model=8, channels=32, blocks=2, sample_steps=4))
    targets = torch.rand(2, 16, 6, 8) * 1.6 - 0.8
    conds = torch.zeros(2, 8, 6, 8)
    conds[0, 0], conds[1, 1] = 1, 1
    opt = torch.optim.Adam(s.parameters(), lr=3e-3)
    for _ in range(400):
        i = torch.randint(0, 2, (32,))
        loss = s.loss(targets[i], conds[i], torch.zeros_like(targets[i]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = s.sample(conds, torch.zeros_like(targets), torch.randn(2, 16, 6, 8))
    err_own = (out - targets).abs().mean((1, 2, 3))
    err_other = (out - targets.flip(0)).abs().mean((1, 2, 3))
    assert (err_own < 0.15).all() and (err_other > 3 * err_own).all(), (err_own, err_other)


def test_a_batch_with_the_sampler_equals_its_sessions_stepped_one_by_one():
    m = _model()
    batched = [m.init_state(p) for p in ("normal", "hell")]
    single = [m.init_state(p) for p in ("normal", "hell")]
    for st, sd in zip(batched + single, [0, 1, 0, 1]):
        m.prefill(st, _frames(seed=sd), KEYS)
    for keys in ([("left",), ("up",)], [("right",), ()]):
        out_b = m.step(batched, keys)
        out_s = np.concatenate([m.step([st], [k]) for st, k in zip(single, keys)])
        assert np.abs(out_b.astype(int) - out_s).max() <= 1


def test_a_sessions_draws_repeat_from_its_seed_and_differ_with_another():
    def roll(m):
        """The new latents the decoder draws over 3 steps, and the frames."""
        drawn, decode = [], m.tok.decode
        m.tok.decode = lambda z: drawn.append(z.clone()) or decode(z)
        s = m.init_state("normal")
        m.prefill(s, _frames(), KEYS)
        frames = np.stack([m.step([s], [("left",)])[0] for _ in range(3)])
        m.tok.decode = decode
        return torch.stack(drawn), frames

    m = _model()
    (za, fa), (zb, fb) = roll(m), roll(m)
    assert torch.equal(za, zb) and np.array_equal(fa, fb)  # prefill reseeds the session's noise
    m.sample_seed = 1
    zc, _ = roll(m)
    assert (za - zc).abs().mean() > 0.3  # the new latent is a draw: another seed, another latent
    zp, _ = roll(_model(sampler=False))
    assert (za - zp).abs().mean() > 0.3  # and not the regression head's mean


def test_the_grade_learns_a_style_pair_and_recache_redraws_the_newest_frame():
    rng = np.random.default_rng(0)  # smooth colour fields, like a game's walls and floors more than white noise
    coarse = torch.from_numpy(rng.integers(0, 256, (40, 3, 6, 8)).astype(np.float32))
    raw = torch.nn.functional.interpolate(coarse, size=(48, 64), mode="bilinear").round().byte()
    raw = raw.permute(0, 2, 3, 1).numpy()
    grade, info = train_grade(raw, GradeConfig(hidden=32, steps=300, batch_frames=4))
    x = raw[-4:]
    before = np.abs(doom.apply_style(x, "normal").astype(int) - doom.apply_style(x, "hell")).mean()
    frames = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    got = torch.stack([grade.apply(f, "normal", "hell") for f in frames])
    after = np.abs(np.rint(got.permute(0, 2, 3, 1).numpy() * 255) - doom.apply_style(x, "hell")).mean()
    assert after < 0.25 * before, (after, before)
    assert info["grade_held_psnr"] > 15  # held-out frames, every pair (night -> * loses the darkest levels)

    m = _model(sampler=False, grade=grade)
    s = m.init_state("normal")
    m.prefill(s, _frames(), KEYS)
    last = s.last.clone()
    m.recache(s, "hell")
    assert torch.equal(s.last, grade.apply(last, "normal", "hell"))
    m.recache(s, "a fire world")  # the same style: nothing to redraw
    assert torch.equal(s.last, grade.apply(last, "normal", "hell"))


def test_a_checkpoint_carries_the_grade_and_the_sampler(tmp_path):
    from worldlab.model.doom.checkpoint import load, save
    from worldlab.model.doom.world_model import load_doom

    torch.manual_seed(0)
    m = _model(grade=StyleGrade(GradeConfig(hidden=8)))
    path = tmp_path / "doom.safetensors"
    save(path, m.net, m.tok, {}, {}, m.grade, m.sampler)
    ck = load(path)
    assert ck.grade is not None and ck.sampler is not None and ck.sampler.cfg == SCFG
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert same(ck.grade, m.grade) and same(ck.sampler, m.sampler)
    assert load_doom(path).describe()["sampler"] == SCFG.sample_steps
    save(path, m.net, m.tok, {}, {})  # an older file without them still loads, as the regression model
    ck = load(path)
    assert ck.grade is None and ck.sampler is None and load_doom(path).describe()["sampler"] == 0
