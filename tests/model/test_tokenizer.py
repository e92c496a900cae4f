"""The pixel tokenizer (colour codebook) and the decoder's copy prior: exact on the world's flat colours,
k-means when there are more colours than codes, and an untrained model that copies the previous frame."""

import numpy as np
import torch

from worldlab import env
from worldlab.config import preset
from worldlab.model.transformer import WorldTransformer, fit_codebook


def _frames(themes=env.THEMES, seeds=(1, 2)) -> torch.Tensor:
    out = [env.rollout(s, t, env.random_actions(6, s)) for t in themes for s in seeds]
    return torch.from_numpy(np.concatenate(out)).float() / 255.0  # (N, 64, 64, 3)


def test_codebook_holds_every_world_colour_and_round_trips_frames_exactly():
    frames = _frames()
    net = WorldTransformer(preset("micro"))
    net.codebook.copy_(fit_codebook(frames, net.cfg.codebook))
    every = {tuple(c) for t in env.THEMES for c in env.palette(t)}
    book = {tuple(c) for c in (net.codebook * 255).round().to(torch.uint8).tolist()}
    assert every <= book  # 4 themes x 6 colours, nothing merged
    assert torch.equal(net.codebook[net.codes(frames)], frames)


def test_codebook_falls_back_to_kmeans_when_colours_outnumber_codes():
    # Three tight clusters of 50 colours each into 3 codes: each code lands on its cluster's mean.
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.1, 0.1, 0.1], [0.5, 0.9, 0.2], [0.9, 0.3, 0.7]])
    px = (centers[:, None, :] + 0.01 * torch.randn(3, 50, 3, generator=g)).reshape(-1, 3)
    book = fit_codebook(px, 3)
    got = book[torch.cdist(centers, book).argmin(1)]
    assert torch.allclose(got, centers, atol=0.01)


def test_untrained_model_copies_the_previous_frame():
    torch.manual_seed(0)
    frames = _frames(themes=("night",), seeds=(3,))[None]  # (1, 7, 64, 64, 3)
    net = WorldTransformer(preset("micro"))
    net.codebook.copy_(fit_codebook(frames, net.cfg.codebook))
    acts = torch.randint(0, env.N_ACTIONS, (1, frames.shape[1]))
    th = torch.full_like(acts, env.THEMES.index("night"))
    with torch.no_grad():
        pred = net.render(net.forward_seq(frames, acts, th, window=3))
    assert torch.equal(pred, frames)  # zero-initialised decoder + copy prior = "nothing moves"
