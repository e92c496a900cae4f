"""SessionConfig.from_file (`worldlab serve --config FILE`): YAML or JSON field -> value, defaults for the rest,
one clear ValueError for a bad file; limit flags override the file."""

import json
import subprocess
import sys

import pytest

from worldlab.commands.serve_cmd import check_args
from worldlab.config import SessionConfig


def test_yaml_and_json_files_set_fields_and_keep_defaults(tmp_path):
    y = tmp_path / "limits.yaml"
    y.write_text("max_sessions: 64\noffer_rate_per_s: 1000\nctl_rate_limits:\n  - [action, 30, 60]\n")
    cfg = SessionConfig.from_file(y)
    assert cfg.max_sessions == 64 and cfg.offer_rate_per_s == 1000 and cfg.ctl_rate_limits == (("action", 30, 60),)
    assert cfg.connect_timeout_s == SessionConfig.connect_timeout_s
    j = tmp_path / "limits.json"
    j.write_text(json.dumps({"fps_range": [1, 60], "watermark": False}))
    cfg = SessionConfig.from_file(j)
    assert cfg.fps_range == (1, 60) and cfg.watermark is False
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert SessionConfig.from_file(empty) == SessionConfig()


@pytest.mark.parametrize("name, text, needle", [
    ("a.yaml", "max_sesions: 3\n", "unknown field 'max_sesions'"),
    ("a.yaml", "max_sessions: 2.5\n", "field 'max_sessions' must be int"),
    ("a.yaml", "max_sessions: true\n", "field 'max_sessions' must be int"),
    ("a.yaml", "fps_target: fast\n", "field 'fps_target' must be float"),
    ("a.yaml", "watermark: 1\n", "field 'watermark' must be bool"),
    ("a.yaml", "- 1\n- 2\n", "expected a mapping"),
    ("a.yaml", "a: [\n", "is not valid yaml"),
    ("a.json", "{'max_sessions': 3}", "is not valid json"),
    ("a.yaml", "ctl_rate_limits: [1, 2]\n", "config"),
])
def test_bad_files_raise_one_clear_value_error(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=".") as info:
        SessionConfig.from_file(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read config .*nope.yaml"):
        SessionConfig.from_file(tmp_path / "nope.yaml")


def serve_args(*argv):
    from worldlab.cli import build_parser

    return build_parser().parse_args(["serve", "--model", "oracle", *argv])


def test_limit_flags_override_the_file(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text("max_sessions: 64\nmax_viewers_per_room: 2\nfps_target: 20\ncodec: h264\nconnect_timeout_s: 5\n")
    cfg = check_args(serve_args("--config", str(path)))
    assert (cfg.max_sessions, cfg.max_viewers_per_room, cfg.fps_target, cfg.codec) == (64, 2, 20, "h264")
    cfg = check_args(serve_args("--config", str(path), "--max-sessions", "3", "--fps", "25", "--codec", "vp8"))
    assert (cfg.max_sessions, cfg.max_viewers_per_room, cfg.fps_target, cfg.codec) == (3, 2, 25, "vp8")
    assert cfg.connect_timeout_s == 5
    assert check_args(serve_args()) == SessionConfig()


def test_out_of_range_values_from_the_file_name_the_field(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text("fps_target: 500\n")
    with pytest.raises(ValueError, match=r"^fps_target must be in \[1, 120\], got 500"):
        check_args(serve_args("--config", str(path)))
    path.write_text("codec: theora\n")
    with pytest.raises(ValueError, match=r"codec must be one of \('vp8', 'h264', 'av1'\), got 'theora'"):
        check_args(serve_args("--config", str(path)))


def test_serve_with_a_bad_config_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text("max_sessions: 3\nbogus: 1\n")
    out = subprocess.run([sys.executable, "-m", "worldlab.cli", "serve", "--model", "oracle", "--config", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "unknown field 'bogus'" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_ice_settings_from_the_file_are_checked_before_anything_loads(tmp_path):
    path = tmp_path / "ice.yaml"
    path.write_text("ice_transport_policy: relay\nice_servers:\n  - urls: stun:stun.example.org\n")
    with pytest.raises(ValueError, match="ice_transport_policy 'relay' needs a TURN server"):
        check_args(serve_args("--config", str(path)))
    path.write_text("ice_servers:\n  - urls: http://turn.example.org\n")
    with pytest.raises(ValueError, match="is not a stun:, stuns:, turn: or turns: URL"):
        check_args(serve_args("--config", str(path)))
    path.write_text("ice_servers:\n  - urls: [turn:127.0.0.1:3478]\nturn_secret: k\nice_transport_policy: relay\n")
    cfg = check_args(serve_args("--config", str(path)))
    assert cfg.ice_servers == ({"urls": ["turn:127.0.0.1:3478"]},) and cfg.ice_transport_policy == "relay"
