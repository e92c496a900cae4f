"""The `worldlab` console script: help lists the commands, none says "not implemented", bench prints JSON."""

import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "worldlab.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands_and_nothing_is_a_stub():
    out = run("--help")
    assert out.returncode == 0
    assert "kernels-bench" in out.stdout
    from worldlab.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        help_text = run(name, "--help")
        assert help_text.returncode == 0, name
        assert "not implemented" not in (help_text.stdout + help_text.stderr).lower()


def test_kernel_bench_json_reports_storage_and_accuracy():
    out = run("kernels-bench", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["storage"]["nvfp4"]["ratio_vs_bf16"] <= 0.29
    assert res["accuracy"]["round_trip_sqnr_db"]["nvfp4"] >= 20.0
    assert res["accuracy"]["matmul_sqnr_db"]["gauss"]["w4a4:plain"] >= 16.0
    assert res["accuracy"]["matmul_sqnr_db"]["heavy"]["w4a4:smooth0.5+lowrank32"] >= 24.0
    if res["device"] == "cpu":
        assert "needs CUDA" in res["speed"]["skipped"]


def test_lab_keeps_the_token_unless_asked_and_only_on_loopback():
    out = run("lab", "--dry-run", "--no-browser")
    assert out.returncode == 0, out.stderr
    assert "notebooks/01_quickstart.ipynb" in out.stdout and "--ServerApp.ip=127.0.0.1" in out.stdout
    assert "IdentityProvider.token" not in out.stdout  # the normal token URL is printed by jupyter
    out = run("lab", "--dry-run", "--no-token")
    assert "--IdentityProvider.token=" in out.stdout
    out = run("lab", "--dry-run", "--no-token", "--host", "0.0.0.0")
    assert out.returncode == 2 and "only allowed on loopback" in out.stderr


def test_bad_cli_input_is_one_clear_line():
    out = run("eval", "--checkpoint", "/nonexistent.safetensors")
    assert out.returncode == 2 and "checkpoint not found: /nonexistent.safetensors" in out.stderr
    assert "Traceback" not in out.stderr
    out = run("train", "--preset", "huge", "--out", "/tmp/x.safetensors")
    assert out.returncode == 2 and "unknown preset 'huge'" in out.stderr


def one_line_error(out, needle):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr and needle in out.stderr, out.stderr[-2000:]
    assert len([ln for ln in out.stderr.splitlines() if ln.strip()]) == 1, out.stderr


def test_bad_serve_and_lab_start_up_values_are_one_line():
    one_line_error(run("serve", "--model", "oracle", "--port", "-1"), "--port must be in [1, 65535]")
    one_line_error(run("serve", "--model", "oracle", "--port", "70000"), "--port must be in [1, 65535]")
    one_line_error(run("serve", "--model", "oracle", "--fps", "0"), "--fps must be in [1, 120]")
    one_line_error(run("serve", "--model", "oracle", "--fps", "nan"), "--fps must be in")
    one_line_error(run("serve", "--model", "oracle", "--max-sessions", "0"), "--max-sessions must be at least 1")
    one_line_error(run("lab", "--dry-run", "--port", "-5"), "--port must be in [1, 65535]")


def test_serve_on_a_port_in_use_is_one_line():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = run("serve", "--model", "oracle", "--port", str(s.getsockname()[1]))
    one_line_error(out, "cannot listen on 127.0.0.1:")
    assert "worldlab serving" not in out.stdout  # nothing claims to serve


def test_serve_logs_access_lines_without_query_strings_and_hides_versions(tmp_path):
    import urllib.request

    from tests.browser_support import free_port, running

    port = free_port()
    log = tmp_path / "serve.log"
    with running([sys.executable, "-m", "worldlab.cli", "serve", "--model", "oracle", "--port", str(port)],
                 port, str(log)):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz?token=s3cret") as r:
            assert r.status == 200 and r.headers["Server"] == "worldlab"
        import time

        deadline = time.monotonic() + 10
        while "GET /healthz" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    text = log.read_text()
    assert '"GET /healthz" 200' in text and "s3cret" not in text, text
    assert "worldlab serving" in text and "Traceback" not in text


# -- access tokens ------------------------------------------------------------------------------------------
def test_token_prints_a_verifiable_token_last_and_rotates(tmp_path):
    from worldlab.security.tokens import Keyring

    keys = tmp_path / "keys.json"
    ring = Keyring.create(keys)
    out = run("token", "--keys", str(keys), "--room", "room-1", "--role", "viewer", "--tenant", "acme", "--ttl", "60")
    assert out.returncode == 0, out.stderr
    claims = ring.verify(out.stdout.splitlines()[-1], room="room-1", role="viewer")
    assert (claims.tenant, claims.role) == ("acme", "viewer")
    out = run("token", "--keys", str(keys), "--role", "admin", "--rotate")
    assert out.returncode == 0 and "rotated" in out.stdout, out.stderr
    rotated = Keyring.load(keys)
    assert rotated.previous == ring.current  # the old key still verifies
    assert rotated.verify(out.stdout.splitlines()[-1], role="admin").role == "admin"


def test_bad_token_input_is_one_line(tmp_path):
    from worldlab.security.tokens import Keyring

    keys = str(tmp_path / "keys.json")
    one_line_error(run("token", "--keys", keys, "--room", "r"), "no key file at")
    Keyring.create(keys)
    one_line_error(run("token", "--keys", keys, "--room", "r", "--role", "owner"), "--role must be one of")
    one_line_error(run("token", "--keys", keys, "--room", "r", "--ttl", "0"), "--ttl must be > 0")
    one_line_error(run("token", "--keys", keys, "--room", "r", "--ttl", "soon"), "--ttl must be a whole number")
    one_line_error(run("token", "--keys", keys, "--role", "viewer"), "--room is required")
    one_line_error(run("token", "--keys", keys, "--room", "a b"), "--room must be 1-64 characters")


def test_serve_with_auth_creates_keys_prints_a_link_and_reloads_them_on_sighup(tmp_path):
    import re
    import signal
    import stat
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    from tests.browser_support import free_port, running
    from worldlab.security.tokens import Keyring

    def offer(token, room, host=None):
        body = json.dumps({"sdp": "v=0\r\nnot sdp", "type": "offer", "room": room, "token": token}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/offer", data=body,
                                     headers={"Content-Type": "application/json", **({"Host": host} if host else {})})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())["error"]["code"]

    def wait_for(needle):
        deadline = time.monotonic() + 20
        while needle not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        return log.read_text()

    port, keys, log = free_port(), tmp_path / "conf" / "keys.json", tmp_path / "serve.log"
    argv = [sys.executable, "-m", "worldlab.cli", "serve", "--model", "oracle", "--port", str(port), "--auth",
            "--keys", str(keys)]
    with running(argv, port, str(log)) as proc:
        text = wait_for("player link")
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and "created a new keyring" in text, text
        link = re.search(r"http://127\.0\.0\.1:\d+/\?room=[\w-]+&token=[\w.-]+", text).group(0)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)
        assert offer(query["token"][0], query["room"][0]) == (400, "bad_sdp")  # past auth
        assert offer(None, "r") == (401, "token_required")
        assert offer(query["token"][0], query["room"][0], host="rebind.attacker.test") == (403, "bad_host")
        new = run("token", "--keys", str(keys), "--room", "r", "--rotate").stdout.splitlines()[-1]
        assert offer(new, "r") == (401, "bad_token")  # not loaded yet
        proc.send_signal(signal.SIGHUP)
        wait_for("keyring reloaded")
        assert offer(new, "r") == (400, "bad_sdp")
        assert offer(query["token"][0], query["room"][0]) == (400, "bad_sdp")  # the previous key still verifies
    assert Keyring.load(keys).previous is not None and "Traceback" not in log.read_text()
