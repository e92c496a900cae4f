"""`worldlab serve`: the browser view — player page, spectators, /offer, /healthz, /metrics.

Binds 127.0.0.1:8080 by default (WebRTC's UDP sockets bind the same address); uses the shipped model, or
the environment oracle with --model oracle. Logs one access line per request to stderr.
"""

from __future__ import annotations

import math

from worldlab.commands import add_toggle_arguments
from worldlab.config import SessionConfig


def register(sub) -> None:
    d = SessionConfig()
    p = sub.add_parser("serve", help="serve the live player page over WebRTC (127.0.0.1:8080)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped tiny one)")
    p.add_argument("--model", default="tiny", choices=["tiny", "oracle"],
                   help="tiny = the trained world model; oracle = the ground-truth environment (transport tests)")
    add_toggle_arguments(p)
    p.add_argument("--codec", default="vp8", choices=["vp8", "h264"])
    p.add_argument("--fps", type=float, default=d.fps_target)
    p.add_argument("--max-sessions", type=int, default=d.max_sessions,
                   help=f"live sessions (players) before new ones get 503 server_full (default {d.max_sessions})")
    p.add_argument("--max-viewers", type=int, default=d.max_viewers_per_room,
                   help=f"spectators per room before 503 room_full (default {d.max_viewers_per_room})")
    p.add_argument("--no-micro-batching", action="store_true", help="step sessions one by one (for comparison)")
    p.add_argument("--open", action="store_true", help="open the page in a browser if one is available")
    p.set_defaults(func=run)


def check_args(args) -> SessionConfig:
    """Refuse bad start-up values with one clear line (ValueError) before anything loads."""
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    lo, hi = SessionConfig.fps_range
    if not (math.isfinite(args.fps) and lo <= args.fps <= hi):
        raise ValueError(f"--fps must be in [{lo:g}, {hi:g}], got {args.fps:g}")
    if args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be at least 1, got {args.max_sessions}")
    if args.max_viewers < 0:
        raise ValueError(f"--max-viewers must be 0 or more, got {args.max_viewers}")
    return SessionConfig(fps_target=args.fps, codec=args.codec, max_sessions=args.max_sessions,
                         max_viewers_per_room=args.max_viewers)


def build_model(args):
    if args.model == "oracle":
        from worldlab.engine.oracle import EnvOracle

        return EnvOracle()
    import torch

    from worldlab.model import load_model
    from worldlab.model.checkpoint import SHIPPED

    torch.set_num_threads(1)  # one core for the model, one for encoding and the event loop
    if args.checkpoint is None and not SHIPPED.is_file():
        raise FileNotFoundError(f"no shipped checkpoint at {SHIPPED}; pass --checkpoint or --model oracle")
    return load_model(args.checkpoint, weights=args.weights, kv=args.kv, window=args.window)


def run(args) -> int:
    import logging
    import webbrowser

    from aiohttp import web

    from worldlab.server import build_app
    from worldlab.server.app import AccessLogger

    cfg = check_args(args)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    model = build_model(args)
    app = build_app(model, codec=args.codec, fps=args.fps, micro_batching=not args.no_micro_batching,
                    host=args.host, config=cfg)
    url = f"http://{args.host}:{args.port}/"

    def listening(_aiohttp_message) -> None:  # run_app calls this once the socket is bound
        print(f"worldlab serving {getattr(model, 'describe', lambda: {})()} at {url}", flush=True)
        if args.open:
            try:
                webbrowser.open(url)
            except webbrowser.Error:
                print("no browser available to open", flush=True)

    try:
        web.run_app(app, host=args.host, port=args.port, print=listening, shutdown_timeout=5.0,
                    access_log_class=AccessLogger)
    except OSError as exc:  # port in use, address not available, host not resolvable: one line, exit 2
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
