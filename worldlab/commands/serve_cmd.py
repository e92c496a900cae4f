"""`worldlab serve`: the browser view — player page, spectators, /offer, /healthz, /metrics.

Binds 127.0.0.1:8080 by default (WebRTC's UDP sockets bind the same address); serves the shipped model, or
any other --model (`worldlab models`; the oracle is the ground-truth environment). Logs one access line per request to stderr. Beyond loopback (or
with --auth) rooms need tokens signed by the keyring in --keys; SIGHUP reloads it after a rotation; SIGTERM
drains (no new sessions, clients told, exit 0 by SessionConfig.drain_deadline_s).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math

from worldlab import allocator
from worldlab.commands import add_model_arguments, threads_arg
from worldlab.config import CODECS, WILDCARD_HOSTS, SessionConfig
from worldlab.transport.ice import check_relay_config

DEFAULT_PORT = 8080  # `worldlab dashboard` watches this one by default


def register(sub) -> None:
    d = SessionConfig()
    p = sub.add_parser("serve", help="serve the live player page over WebRTC (127.0.0.1:8080)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    add_model_arguments(p)
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="torch CPU threads for the model runner (default 1: one core models, one encodes and "
                        "serves; more than the cores stalls every step when the CPU is busy; worldlab.threads)")
    # The limits below default to None: unset, the --config file (or SessionConfig) decides; set, they win.
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or JSON file of SessionConfig fields (limits, timeouts, rates); the flags below "
                        "override it")
    p.add_argument("--codec", default=None, choices=CODECS, help=f"default {d.codec}")
    p.add_argument("--fps", type=float, default=None, help=f"default {d.fps_target:g}")
    p.add_argument("--audio", type=on_off, default=None, metavar="on|off",
                   help="the sound track (a click per visible bounce, a tone pitched by the agent's x) "
                        f"(default {'on' if d.audio else 'off'})")
    p.add_argument("--max-sessions", type=int, default=None,
                   help=f"live sessions (players) before new ones get 503 server_full (default {d.max_sessions})")
    p.add_argument("--max-viewers", type=int, default=None,
                   help=f"spectators per room before 503 room_full (default {d.max_viewers_per_room})")
    p.add_argument("--otel-jsonl", default=None, metavar="FILE",
                   help="write OpenTelemetry spans (one `frame` span per sent frame, the session funnel) to FILE "
                        "as JSON lines")
    p.add_argument("--otel-endpoint", default=None, metavar="URL",
                   help="send the spans to this OTLP/HTTP endpoint instead (e.g. http://127.0.0.1:4318/v1/traces)")
    p.add_argument("--no-micro-batching", action="store_true", help="step sessions one by one (for comparison)")
    p.add_argument("--open", action="store_true", help="open the page in a browser if one is available")
    p.add_argument("--auth", action="store_true",
                   help="rooms need access tokens (always on when --host is not loopback)")
    p.add_argument("--keys", default=None, help="keyring file (implies --auth), created (mode 0600) if missing "
                                                "(default: ~/.config/worldlab/keys.json)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name clients may use (Host/Origin check against DNS rebinding; repeatable); "
                        "loopback names and --host are always allowed")
    p.add_argument("--records", default=None, metavar="DIR",
                   help="where signed session records and their Ed25519 key (created, mode 0600) are kept "
                        "(default: ~/.config/worldlab); `worldlab verify --records DIR` reads them")
    p.add_argument("--triage-dir", default=None, metavar="DIR",
                   help="where sealed triage buffers and their key go (default: <config dir>/triage)")
    p.add_argument("--no-triage", action="store_true", help="keep no encrypted triage buffers")
    p.set_defaults(func=run)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")
    return value == "on"


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(args) -> list[str] | None:
    """The Host/Origin allow-list: loopback names (and --host) on loopback or with --allow-host; otherwise
    None (any name: a non-loopback server without --allow-host is reached by names we cannot guess)."""
    if not args.allow_host and not is_loopback(args.host):
        return None
    extra = [] if args.host in WILDCARD_HOSTS else [args.host]
    return [*LOOPBACK_NAMES, *extra, *args.allow_host]


def load_keyring(args):
    """The keyring for --auth (created if missing), or None when serving open on loopback."""
    if not (args.auth or args.keys or not is_loopback(args.host)):
        return None
    from worldlab.security.tokens import Keyring, default_keys_path

    path = args.keys or default_keys_path()
    try:
        keyring, created = Keyring.load_or_create(path)
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        raise ValueError(f"cannot use key file {path}: {exc.strerror}") from None
    if created:
        print(f"created a new keyring at {path} (mode 0600)", flush=True)
    return keyring


def reload_on_sighup(keyring):
    """An aiohttp on_startup hook: SIGHUP re-reads the key file (after `worldlab token --rotate`); a bad file
    keeps the keys in use."""
    import asyncio
    import signal

    def reload() -> None:
        try:
            keyring.reload()
            print(f"keyring reloaded from {keyring.path} (current key {keyring.current[0]})", flush=True)
        except (OSError, ValueError) as exc:
            print(f"keyring not reloaded, keeping the keys in use: {exc}", flush=True)

    async def install(app) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

    return install


def drain_on_sigterm(hub):
    """An aiohttp on_startup hook: SIGTERM drains (PeerHub.start_drain: no new sessions, peers told, rooms
    ended by SessionConfig.drain_deadline_s) instead of stopping at once; a second SIGTERM or SIGINT stops at
    once. Once drained (by SIGTERM or POST /admin/drain) the server stops and `worldlab serve` exits 0."""
    import asyncio
    import signal

    from aiohttp.web import GracefulExit

    def stop() -> None:
        raise GracefulExit()  # what aiohttp's own handler raises: run_app shuts down and returns

    def on_sigterm() -> None:
        if hub.draining_until is not None:
            stop()
        print(f"SIGTERM: draining, exiting within {hub.start_drain():.1f} s", flush=True)

    async def exit_when_drained() -> None:
        await hub.drained.wait()
        print("drained: exiting", flush=True)
        asyncio.get_running_loop().call_soon(stop)

    tasks = []

    async def install(app) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)  # replaces aiohttp's
        tasks.append(asyncio.ensure_future(exit_when_drained()))

    return install


def page_url(args, room: str | None = None, token: str | None = None) -> str:
    import socket
    import urllib.parse

    host = socket.gethostname() if args.host in WILDCARD_HOSTS else args.host
    host = f"[{host}]" if ":" in host else host
    query = "?" + urllib.parse.urlencode({"room": room, "token": token}) if token else ""
    return f"http://{host}:{args.port}/{query}"


def start_link(args, keyring, cfg) -> str:
    """A player link for a fresh room, so the operator can open the page of an --auth server."""
    import secrets

    room = secrets.token_urlsafe(cfg.room_id_bytes)
    return page_url(args, room, keyring.issue(room, "player", ttl_s=cfg.token_ttl_s))


def triage_store(args, cfg):
    """The encrypted triage buffers' store (its key created 0600 on first use), or None with --no-triage."""
    if args.no_triage:
        return None
    from worldlab.security import config_dir
    from worldlab.security.ringbuffer import TriageStore

    return TriageStore.at(args.triage_dir or config_dir() / "triage", seconds=cfg.triage_seconds,
                          max_bytes=cfg.triage_max_bytes)


# --flag -> the SessionConfig field it sets.
FLAG_FIELDS = {"codec": "codec", "fps": "fps_target", "max_sessions": "max_sessions",
               "max_viewers": "max_viewers_per_room", "otel_jsonl": "otel_jsonl", "otel_endpoint": "otel_endpoint",
               "audio": "audio"}


def session_config(args) -> SessionConfig:
    """The --config file (or the defaults) with the limit flags that were given laid over it."""
    cfg = SessionConfig.from_file(args.config) if args.config else SessionConfig()
    given = {name: getattr(args, flag) for flag, name in FLAG_FIELDS.items() if getattr(args, flag) is not None}
    return dataclasses.replace(cfg, **given)


def _named(args, flag: str) -> str:
    """How an error names a limit: by its flag when given, else by its config field."""
    return f"--{flag.replace('_', '-')}" if getattr(args, flag) is not None else FLAG_FIELDS[flag]


def check_args(args) -> SessionConfig:
    """Refuse bad start-up values with one clear line (ValueError) before anything loads."""
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    cfg = session_config(args)
    lo, hi = cfg.fps_range
    if not (math.isfinite(cfg.fps_target) and lo <= cfg.fps_target <= hi):
        raise ValueError(f"{_named(args, 'fps')} must be in [{lo:g}, {hi:g}], got {cfg.fps_target:g}")
    if cfg.max_sessions < 1:
        raise ValueError(f"{_named(args, 'max_sessions')} must be at least 1, got {cfg.max_sessions}")
    if cfg.max_viewers_per_room < 0:
        raise ValueError(f"{_named(args, 'max_viewers')} must be 0 or more, "
                         f"got {cfg.max_viewers_per_room}")
    if cfg.codec not in CODECS:
        raise ValueError(f"{_named(args, 'codec')} must be one of {CODECS}, got {cfg.codec!r}")
    for name in ("max_sessions_per_tenant", "room_frame_cap", "tenant_frame_cap", "drain_deadline_s",
                 "anomaly_model_share", "anomaly_median_factor"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{name} must be 0 or more, got {getattr(cfg, name)}")
    for name in ("frame_cap_window_s", "caps_check_s"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {getattr(cfg, name)}")
    check_relay_config(cfg)
    return cfg


def build_model(args):
    import sys

    from worldlab import commands, threads

    n, warning = threads.server_threads(args.threads, runners=1)  # one Scheduler runner serves the model
    if warning:
        print(f"worldlab serve: warning: {warning}", file=sys.stderr, flush=True)
    threads.for_inference(n)
    return commands.build_model(args)


def run(args) -> int:
    import logging
    import webbrowser

    from aiohttp import web

    from worldlab.model.protocol import describe
    from worldlab.security.records import RecordStore
    from worldlab.server import build_app
    from worldlab.server.app import HUB, AccessLogger

    cfg = check_args(args)
    allocator.cap_arenas(cfg.malloc_arena_max)  # before the model and the encoders start their threads
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    keyring = load_keyring(args)
    model = build_model(args)
    app = build_app(model, codec=cfg.codec, fps=cfg.fps_target, micro_batching=not args.no_micro_batching,
                    host=args.host, config=cfg, keyring=keyring, allowed_hosts=allowed_hosts(args),
                    records=RecordStore(args.records), triage=triage_store(args, cfg))
    allocator.freeze_startup()  # the model and the modules are never garbage: keep gc passes short
    if keyring is not None:
        app.on_startup.append(reload_on_sighup(keyring))
    app.on_startup.append(drain_on_sigterm(app[HUB]))
    url = start_link(args, keyring, cfg) if keyring is not None else page_url(args)

    def listening(_aiohttp_message) -> None:  # run_app calls this once the socket is bound
        auth = f"tokens from {keyring.path}" if keyring is not None else "open (loopback demo, no tokens)"
        print(f"worldlab serving {describe(model)} at {page_url(args)} [{auth}]",
              flush=True)
        if keyring is not None:
            print(f"player link for a fresh room (valid {cfg.token_ttl_s / 3600:g} h): {url}", flush=True)
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
