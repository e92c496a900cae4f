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
