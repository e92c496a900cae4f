"""`worldlab dashboard` (a live page of the rooms of a running server) and `worldlab grafana` (the same
figures as a Grafana dashboard JSON for a Prometheus that scrapes it): where operators look.
"""

from __future__ import annotations

DEFAULT_PORT = 8050


def register(sub) -> None:
    from worldlab.commands.serve_cmd import DEFAULT_PORT as SERVE_PORT

    p = sub.add_parser("dashboard", help="serve a live page of a worldlab server's rooms (fps, drops, g2g vs SLO)")
    p.add_argument("--server", default=f"http://127.0.0.1:{SERVE_PORT}", help="the worldlab serve to watch (default %(default)s)")
    p.add_argument("--token", default=None, help="admin token (worldlab token --role admin): per-room series "
                                                 "from a non-loopback scrape")
    p.add_argument("--host", default="127.0.0.1", help="address to serve the page on (default %(default)s)")
    p.add_argument("--port", default=str(DEFAULT_PORT), help="port to serve the page on (default %(default)s)")
    p.add_argument("--period", default="1", help="seconds between scrapes (default %(default)s)")
    p.set_defaults(func=run_dashboard)

    p = sub.add_parser("grafana", help="write the Grafana dashboard JSON for worldlab serve's /metrics")
    p.add_argument("--out", required=True, help="where to write the dashboard (.json)")
    p.set_defaults(func=run_grafana)


def check_dashboard_args(args) -> tuple[int, float]:
    """(port, period) or one ValueError naming what is wrong; the server must answer /metrics now."""
    from worldlab.server.dashboard import fetch

    if not args.server.startswith(("http://", "https://")):
        raise ValueError(f"--server must be an http(s) URL, got {args.server!r}")
    try:
        port, period = int(args.port), float(args.period)
    except ValueError:
        raise ValueError(f"--port must be a whole number and --period seconds, got {args.port!r} and {args.period!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be 1..65535, got {port}")
    if not 0.2 <= period <= 60:
        raise ValueError(f"--period must be 0.2..60 seconds, got {period:g}")
    fetch(args.server, args.token)
    return port, period


def run_dashboard(args) -> int:
    import panel as pn

    from worldlab.server.dashboard import Dashboard

    port, period = check_dashboard_args(args)
    print(f"worldlab dashboard: watching {args.server} at http://{args.host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        pn.serve({"/": lambda: Dashboard(args.server, args.token, period).panel()}, address=args.host, port=port,
                 show=False, title="worldlab dashboard", websocket_origin=[f"{args.host}:{port}", f"localhost:{port}"])
    except OSError as exc:
        raise ValueError(f"cannot serve on {args.host}:{port}: {exc.strerror or exc}") from None
    return 0


def run_grafana(args) -> int:
    import pathlib

    from worldlab.server import grafana

    out = pathlib.Path(args.out)
    if out.suffix != ".json":
        raise ValueError(f"--out must be a .json file, got {args.out!r}")
    if not out.parent.is_dir():
        raise ValueError(f"--out: no directory {out.parent}")
    grafana.write(out)
    print(f"wrote {out}: {len(grafana.panels())} panels; import it in Grafana with a Prometheus data source")
    return 0
