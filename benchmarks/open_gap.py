"""Open-space gap: object 0 hidden in the *input* from frame 4 to 15 (anywhere in the frame), teacher-forced
parallel pass over 24 frames of held-out seeds 0..19; the share of seeds whose predicted top-left corner of
object 0 is exact after k hidden input frames (block 3 + k predicts frame 4 + k)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from worldlab import env
from worldlab.evaluate import theme_for_seed
from worldlab.model import load_model
from worldlab.model.sprites import ABSENT, true_positions

HIDE = (4, 16)  # input frames [4, 16) read ABSENT for object 0
FRAMES = 24
AFTER = (1, 2, 3, 5, 8, 12)


@torch.no_grad()
def gap_shares(model, seeds=range(20), after=AFTER, start="reset") -> dict:
    net = model.net
    exact = {k: [] for k in after}
    for seed in seeds:
        theme = theme_for_seed(seed)
        acts = env.random_actions(FRAMES, seed)
        w = env.World(seed, theme)
        frames = [w.reset()]
        pos = [true_positions(w.state())]
        for a in acts:
            frames.append(w.step(a))
            pos.append(true_positions(w.state()))
        obs = net.codec.tokenize(torch.from_numpy(np.stack(frames[:FRAMES])))  # (F, 3, 4)
        obs[HIDE[0]:HIDE[1], 1] = ABSENT
        a = torch.tensor([[env.action_id(k) for k in acts]])
        th = torch.full_like(a, env.THEMES.index(theme))
        pred = net.positions(net.forward_seq(obs[None], a, th, model.window))[0]  # (F, 3, 2): frame t + 1
        target = torch.tensor(pos[1:])  # (F, 3, 2)
        for k in after:
            t = HIDE[0] - 1 + k
            exact[k].append(bool((pred[t, 1] == target[t, 1]).all()))
    return {k: float(np.mean(v)) for k, v in exact.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", help="a checkpoint (default: the shipped tiny)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="(the output is always one JSON line)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        models = {w: load_model(args.checkpoint, window=w) for w in ("short", "long")}
    except (OSError, ValueError) as exc:
        raise SystemExit(f"open_gap: {exc}") from None
    print(json.dumps({w: gap_shares(m) for w, m in models.items()}))
