"""`worldlab triage open FILE`: decrypt a sealed triage buffer (checking every GCM tag) and export an MP4
of its frames plus the input log; `--json` prints the paths and counts."""

from __future__ import annotations

import json
import pathlib


def register(sub) -> None:
    p = sub.add_parser("triage", help="open a sealed triage buffer: MP4 + input log")
    tsub = p.add_subparsers(dest="triage_command", metavar="ACTION", required=True)
    o = tsub.add_parser("open", help="decrypt FILE and export triage-<session>.mp4 and .inputs.jsonl")
    o.add_argument("file", type=pathlib.Path)
    o.add_argument("--key", type=pathlib.Path, default=None,
                   help="the server's triage key (default: <config dir>/triage.key)")
    o.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."), help="output directory (default .)")
    o.add_argument("--size", type=int, default=256, help="video size in pixels (default 256)")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=run_open)


def run_open(args) -> int:
    from worldlab.security import config_dir
    from worldlab.security import ringbuffer as rb

    if not args.file.is_file():
        raise FileNotFoundError(f"no such triage file: {args.file}")
    if not 16 <= args.size <= 2048:
        raise ValueError(f"--size must be in [16, 2048], got {args.size}")
    key = rb.load_server_key(args.key or config_dir() / rb.KEY_FILE, create=False)
    opened = rb.open_sealed(args.file, key)
    video, log = rb.export(opened, args.out, size=args.size)
    out = {"session": opened.head["session"], "reason": opened.head.get("reason"), "frames": len(opened.frames),
           "inputs": len(opened.inputs), "video": str(video), "inputs_log": str(log)}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0
