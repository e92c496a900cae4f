"""Access tokens and the keyring: round trip, forgeries and tampering, expiry, room and role, rotation,
the key file (mode 0600, reload), constant-time MAC comparison; and the token-bucket rate limit."""

import base64
import hmac
import json
import stat
from unittest import mock

import pytest

from worldlab.security import tokens
from worldlab.security.ratelimit import TokenBucket
from worldlab.security.tokens import Keyring, TokenError

NOW = 1_800_000_000


@pytest.fixture
def ring(tmp_path):
    return Keyring.create(tmp_path / "keys.json")


def refused(ring, token, status, code, **kw):
    with pytest.raises(TokenError) as exc:
        ring.verify(token, now=NOW, **kw)
    assert (exc.value.status, exc.value.code) == (status, code), exc.value
    return exc.value


def test_round_trip_carries_every_claim(ring):
    t = ring.issue("room-1", "viewer", tenant="acme", ttl_s=60, now=NOW)
    c = ring.verify(t, room="room-1", role="viewer", now=NOW)
    assert (c.room, c.tenant, c.role, c.exp, c.kid) == ("room-1", "acme", "viewer", NOW + 60, ring.current[0])
    assert len(t) < 300 and all(ch.isalnum() or ch in "-_." for ch in t)  # fits a URL query unescaped


def test_missing_token_is_401_token_required(ring):
    for missing in (None, ""):
        refused(ring, missing, 401, "token_required")


def test_forged_mac_and_tampered_payload_are_401_bad_token(ring, tmp_path):
    t = ring.issue("room-1", "player", ttl_s=60, now=NOW)
    body, mac = t.split(".")
    other = Keyring.create(tmp_path / "other.json").issue("room-1", "player", ttl_s=60, now=NOW)
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["room"] = "room-2"
    tampered = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode() + "." + mac
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    for bad in (other, tampered, f"{body}.{flipped}", body, f"{t}.x", t + "=", t + "\n", "x" * 5000, 42, "a.b"):
        refused(ring, bad, 401, "bad_token")


def test_expired_is_401_token_expired(ring):
    t = ring.issue("room-1", "player", ttl_s=60, now=NOW)
    ring.verify(t, room="room-1", role="player", now=NOW + 59)
    with pytest.raises(TokenError) as exc:
        ring.verify(t, room="room-1", role="player", now=NOW + 60)
    assert (exc.value.status, exc.value.code) == (401, "token_expired")


def test_wrong_room_and_wrong_role_are_403(ring):
    player = ring.issue("room-1", "player", ttl_s=60, now=NOW)
    viewer = ring.issue("room-1", "viewer", ttl_s=60, now=NOW)
    admin = ring.issue(None, "admin", ttl_s=60, now=NOW)
    refused(ring, player, 403, "wrong_room", room="room-2", role="player")
    refused(ring, viewer, 403, "wrong_role", room="room-1", role="player")  # a viewer cannot create a room
    assert ring.verify(player, room="room-1", role="viewer", now=NOW).role == "player"  # a player may watch
    assert ring.verify(admin, role="admin", now=NOW).room == tokens.ANY_ROOM
    refused(ring, admin, 403, "wrong_role", room="room-1", role="viewer")  # admin opens no room
    refused(ring, player, 403, "wrong_role", role="admin")


def test_previous_key_still_verifies_after_rotate_but_not_after_two(ring):
    old = ring.issue("room-1", "player", ttl_s=60, now=NOW)
    old_kid = ring.current[0]
    new_kid = ring.rotate()
    assert new_kid != old_kid and ring.previous[0] == old_kid
    new = ring.issue("room-1", "player", ttl_s=60, now=NOW)
    for t in (old, new):
        ring.verify(t, room="room-1", role="player", now=NOW)
    again = Keyring.load(ring.path)  # the rotation was saved
    again.verify(old, room="room-1", now=NOW)
    ring.rotate()
    refused(ring, old, 401, "bad_token")
    ring.verify(new, room="room-1", now=NOW)


def test_key_file_is_0600_and_reload_picks_up_a_rotation(ring, tmp_path):
    assert stat.S_IMODE(ring.path.stat().st_mode) == 0o600
    assert ring.path.read_text().count("key") >= 1 and len(ring.current[1]) == 32
    server = Keyring.load(ring.path)
    cli = Keyring.load(ring.path)
    cli.rotate()  # another process (worldlab token --rotate) rotates the file
    t = cli.issue("r", "player", ttl_s=60, now=NOW)
    refused(server, t, 401, "bad_token")
    server.reload()  # SIGHUP
    server.verify(t, room="r", now=NOW)
    assert stat.S_IMODE(ring.path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


def test_key_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no key file"):
        Keyring.load(tmp_path / "missing.json")
    ring = Keyring.create(tmp_path / "k.json")
    ring.path.chmod(0o644)
    with pytest.raises(ValueError, match="readable by other users"):
        Keyring.load(ring.path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    bad.chmod(0o600)
    with pytest.raises(ValueError, match="not a worldlab keyring"):
        Keyring.load(bad)
    ring.path.chmod(0o600)
    server = Keyring.load(ring.path)
    kid = server.current[0]
    bad.replace(ring.path)  # the key file is broken between two SIGHUPs
    with pytest.raises(ValueError):
        server.reload()
    assert server.current[0] == kid  # a failed reload keeps the keys in use


def test_mac_is_compared_in_constant_time(ring):
    t = ring.issue("room-1", "player", ttl_s=60, now=NOW)
    with mock.patch.object(tokens.hmac, "compare_digest", wraps=hmac.compare_digest) as cmp:
        ring.verify(t, room="room-1", now=NOW)
        refused(ring, t[:-1] + ("A" if t[-1] != "A" else "B"), 401, "bad_token")
    assert cmp.call_count >= 2


def test_issue_refuses_bad_input(ring):
    for kw in ({"room": "r", "role": "owner"}, {"room": None, "role": "player"}, {"room": "r", "role": "viewer", "ttl_s": 0},
               {"room": "r", "role": "player", "tenant": ""}):
        with pytest.raises(ValueError):
            ring.issue(kw.pop("room"), kw.pop("role"), **{"ttl_s": 60, **kw})


# -- rate limit ---------------------------------------------------------------------------------------------
def test_token_bucket_allows_a_burst_then_the_rate():
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.allow("ip", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert b.retry_after("ip", now=0.0) == pytest.approx(0.5)
    assert b.allow("other", now=0.0)  # keys are independent
    assert not b.allow("ip", now=0.25) and b.allow("ip", now=0.5)
    assert b.retry_after("ip", now=0.5) == pytest.approx(0.5)
    assert b.allow("ip", now=100.0) and b.retry_after("ip", now=100.0) == 0.0


def test_token_bucket_memory_is_bounded():
    b = TokenBucket(rate=1.0, burst=2, max_keys=100)
    for i in range(1000):
        b.allow(f"ip{i}", now=0.0)
    assert len(b) == 100
    b.allow("late", now=2.0)  # every idle bucket has refilled by now: forgotten
    assert len(b) == 1
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
