"""`worldlab token`: print an access token for a room (player, viewer) or the operator (admin).

Signed by the keyring of `worldlab serve --auth --keys FILE`; --rotate makes a new signing key first (old
tokens keep verifying until the next rotation; send the server SIGHUP to load it).
"""

from __future__ import annotations


def register(sub) -> None:
    from worldlab.config import SessionConfig

    p = sub.add_parser("token", help="print an access token for a room of `worldlab serve --auth`")
    p.add_argument("--keys", default=None, help="keyring file (default: ~/.config/worldlab/keys.json)")
    p.add_argument("--room", default=None, help="the room the token opens (not for --role admin)")
    p.add_argument("--role", default="player", help="player | viewer | admin (default player)")
    p.add_argument("--tenant", default=None, help="tenant: viewers see only their own tenant's rooms")
    p.add_argument("--ttl", default=str(SessionConfig.token_ttl_s),
                   help=f"lifetime in seconds (default {SessionConfig.token_ttl_s})")
    p.add_argument("--rotate", action="store_true", help="first make a new signing key (the old one still verifies)")
    p.set_defaults(func=run)


def check_args(args) -> int:
    """The ttl in seconds; one clear ValueError for anything else that is wrong."""
    from worldlab.security.tokens import ROLES
    from worldlab.transport.rooms import ROOM_RE

    if args.role not in ROLES:
        raise ValueError(f"--role must be one of {', '.join(ROLES)}, got {args.role!r}")
    if args.role != "admin" and args.room is None:
        raise ValueError(f"--room is required for a {args.role} token")
    for name in ("room", "tenant"):
        value = getattr(args, name)
        if value is not None and not ROOM_RE.match(value):
            raise ValueError(f"--{name} must be 1-64 characters of A-Z a-z 0-9 _ -, got {value!r}")
    try:
        ttl = int(args.ttl)
    except ValueError:
        raise ValueError(f"--ttl must be a whole number of seconds, got {args.ttl!r}") from None
    if ttl <= 0:
        raise ValueError(f"--ttl must be > 0 seconds, got {ttl}")
    return ttl


def run(args) -> int:
    from worldlab.security.tokens import DEFAULT_TENANT, Keyring, default_keys_path

    ttl = check_args(args)
    path = args.keys or default_keys_path()
    keyring = Keyring.load(path)
    if args.rotate:
        print(f"rotated {path}: new key {keyring.rotate()}; send the server SIGHUP to use it", flush=True)
    print(keyring.issue(args.room, args.role, tenant=args.tenant or DEFAULT_TENANT, ttl_s=ttl))
    return 0
