"""A played session on the world model, side by side with the environment: held keys and a prompt switch.

Writes a GIF (truth | model, x4) for docs/model.md and prints the pooled PSNR of each segment.
    python benchmarks/session_clip.py --out docs/images/session.gif [--checkpoint PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

from worldlab import env
from worldlab.evaluate import mse, pooled_psnr
from worldlab.model import CONTEXT_FRAMES, load_model

# (label, keys held, frames, prompt switched to at the start of the segment or None)
SCRIPT = (("hold right", ("right",), 30, None), ("hold down", ("down",), 20, None),
          ("prompt: a snowy field", ("left",), 30, "a snowy field"), ("hold up+left", ("up", "left"), 20, None),
          ("idle", (), 20, None))
SCALE = 4


def play(model, seed: int, theme: str = "forest"):
    """-> list of (label, truth frame, model frame) for every scripted step."""
    w = env.World(seed, theme)
    ctx_actions = env.random_actions(CONTEXT_FRAMES - 1, seed)
    truth = [w.reset()] + [w.step(a) for a in ctx_actions]
    state = model.init_state(f"a walk in the {theme}")
    model.prefill(state, np.stack(truth), ctx_actions)
    out = []
    for label, keys, n, prompt in SCRIPT:
        if prompt:
            model.recache(state, prompt)
            w.set_theme(env.theme_for_prompt(prompt))
        for _ in range(n):
            out.append((label, w.step(keys), model.step([state], [keys])[0]))
    return out


def frame_image(label: str, truth: np.ndarray, pred: np.ndarray) -> Image.Image:
    s = env.SIZE * SCALE
    img = Image.new("RGB", (2 * s + 8, s + 18), (24, 24, 24))
    for i, f in enumerate((truth, pred)):
        img.paste(Image.fromarray(f).resize((s, s), Image.NEAREST), (i * (s + 8), 18))
    d = ImageDraw.Draw(img)
    d.text((4, 3), f"environment  |  model   ({label})", fill=(230, 230, 230))
    return img


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/images/session.gif")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--window", default="short", choices=["short", "long"])
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    if not out.parent.is_dir():  # before any model work
        print(f"error: directory {out.parent} does not exist", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    steps = play(load_model(args.checkpoint, window=args.window), args.seed)
    imgs = [frame_image(lbl, t, m) for lbl, t, m in steps]
    imgs[0].save(out, save_all=True, append_images=imgs[1:], duration=33, loop=0)
    err = [(lbl, mse(t, m)) for lbl, t, m in steps]
    res = {"frames": len(steps), "psnr_all": pooled_psnr([e for _, e in err]), "gif": str(out),
           "segments": {lbl: pooled_psnr([e for l2, e in err if l2 == lbl]) for lbl, *_ in SCRIPT}}
    print(json.dumps(res) if args.json else "\n".join(f"{k}: {v}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
