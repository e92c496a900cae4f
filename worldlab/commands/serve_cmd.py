"""`worldlab serve`: the browser view — player page, spectators, /offer, /healthz, /metrics.

Binds 127.0.0.1:8080 by default; uses the shipped model, or the environment oracle with --model oracle.
"""

from __future__ import annotations

from worldlab.commands import add_toggle_arguments



def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the live player page over WebRTC (127.0.0.1:8080)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped tiny one)")
    p.add_argument("--model", default="tiny", choices=["tiny", "oracle"],
                   help="tiny = the trained world model; oracle = the ground-truth environment (transport tests)")
    add_toggle_arguments(p)
    p.add_argument("--codec", default="vp8", choices=["vp8", "h264"])
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--no-micro-batching", action="store_true", help="step sessions one by one (for comparison)")
    p.add_argument("--open", action="store_true", help="open the page in a browser if one is available")
    p.set_defaults(func=run)


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

    logging.basicConfig(level=logging.WARNING)
    model = build_model(args)
    app = build_app(model, codec=args.codec, fps=args.fps, micro_batching=not args.no_micro_batching)
    url = f"http://{args.host}:{args.port}/"
    print(f"worldlab serving {getattr(model, 'describe', lambda: {})()} at {url}", flush=True)
    if args.open:
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            print("no browser available to open", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=5.0)
    return 0
