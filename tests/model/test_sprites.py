"""The sprite tokenizer and compositor: fit from data, lossless on the world's frames (every theme, held-out
seeds), boxes of partly hidden sprites, ABSENT for hidden ones."""

import numpy as np
import torch

from worldlab import env
from worldlab.config import preset
from worldlab.model.sprites import ABSENT, SpriteCodec, fit_codec, true_positions
from worldlab.train import simulate


def _world_frames(seeds, steps=40):
    frames, pos, themes = [], [], []
    for s in seeds:
        w = env.World(s, env.THEMES[s % 4])
        for a in env.random_actions(steps, s, hold=(1, 30)):
            frames.append(w.step(a))
            pos.append(true_positions(w.state()))
            themes.append(s % 4)
    return torch.from_numpy(np.stack(frames)), torch.tensor(pos), torch.tensor(themes)


def _fitted() -> SpriteCodec:
    frames, pos, _a, _t = simulate(preset("micro"), np.random.default_rng(0), 8)
    return fit_codec(SpriteCodec(), frames.flatten(0, 1), pos.flatten(0, 1))


def test_fit_recovers_the_world_geometry():
    c = _fitted()
    assert c.sprite_size.tolist() == [env.AGENT, env.OBJECT, env.OBJECT]
    pillar = torch.zeros(env.SIZE, dtype=torch.bool)
    pillar[env.OCCLUDER_X[0]:env.OCCLUDER_X[1]] = True
    assert torch.equal(c.plate == 2, pillar.expand(env.SIZE, env.SIZE))
    d = c.depth
    assert d[4] < d[5] < d[2] < d[3]  # object 0 < object 1 < pillar < agent, as the world draws them


def test_render_of_true_positions_is_the_world_frame_exactly_on_held_out_seeds():
    c = _fitted()
    frames, pos, themes = _world_frames(range(0, 12))
    assert torch.equal(c.render(pos, themes), frames)


def test_tokenizer_boxes_visible_pixels_and_marks_hidden_sprites_absent():
    c = _fitted()
    w = env.World(0, "night")
    # object 0 fully behind the pillar, object 1 half under the agent (agent drawn on top)
    f = w.place(agent=(10, 10), objects=[(41, 20), (11, 8)], velocities=[(1, 1), (1, 1)])
    boxes = c.tokenize(torch.from_numpy(f)).tolist()
    assert boxes[0] == [10, 10, 15, 15]
    assert boxes[1] == [ABSENT] * 4
    assert boxes[2] == [11, 8, 14, 9]  # only the two rows above the agent show
    assert c.tokenize(torch.from_numpy(f)[None].expand(3, -1, -1, -1)).shape == (3, 3, 4)


def test_hidden_object_drill_hides_one_object_for_a_span_and_nothing_else():
    import dataclasses

    from worldlab.train import hide_objects

    cfg = dataclasses.replace(preset("tiny"), hide_objects=1.0, hide_frames=(5, 9))
    obs = torch.randint(0, 60, (64, 24, 3, 4))
    out = hide_objects(obs, cfg, np.random.default_rng(0))
    changed = (out != obs).any(-1)  # (B, F, 3)
    assert not changed[:, 0].any() and not changed[:, :, 0].any()  # frame 0 and the agent are never hidden
    for b in range(64):
        frames, sprites = changed[b].nonzero(as_tuple=True)
        assert len(set(sprites.tolist())) == 1  # one object per sequence
        span = frames.tolist()
        assert 5 <= len(span) <= 9 and span == list(range(span[0], span[0] + len(span)))  # one contiguous span
        assert (out[b, span, sprites[0]] == ABSENT).all()
    assert torch.equal(hide_objects(obs, dataclasses.replace(cfg, hide_objects=0.0), np.random.default_rng(0)), obs)
