"""`worldlab verify`: a recorded watermarked clip names its signed session record; a clean clip says none was
found (exit 1); a tampered record is reported invalid (exit 3); an unreadable file is one stderr line (exit 2)."""

import json
import subprocess
import sys

import pytest

from benchmarks.watermark_bench import stream, world_frames, write_clip
from worldlab import cli
from worldlab.security import records
from worldlab.security.watermark import format_id

WM_ID = 0x0BADC0DE_CAFEF00D
JSON_KEYS = {"found", "session", "watermark_id", "signature_valid", "record", "bit_confidence"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A marked and a clean 3 s clip (RoomEncoder, low rung, WebM), and a records dir naming the marked one."""
    tmp = tmp_path_factory.mktemp("verify")
    frames = world_frames(seed=5, rung="low")
    marked = write_clip(stream(frames, WM_ID), tmp / "marked.webm", frames.shape[1:3])
    clean = write_clip(stream(frames, None), tmp / "clean.webm", frames.shape[1:3])
    store = records.RecordStore(tmp / "records")
    store.append(records.make_record("s1", "1111111111111111", "other", "00" * 32))
    store.append(records.make_record("s42", format_id(WM_ID), "room-x", "ab" * 32))
    return marked, clean, store


def verify(capsys, *argv):
    code = cli.main(["verify", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_names_the_signed_session(capsys, clips):
    marked, _, store = clips
    code, out, _ = verify(capsys, marked, "--records", store.dir, "--json")
    got = json.loads(out)
    assert code == 0 and set(got) == JSON_KEYS
    assert got["found"] and got["signature_valid"] and got["session"] == "s42"
    assert got["watermark_id"] == format_id(WM_ID) == got["record"]["watermark_id"]
    assert got["record"]["room"] == "room-x" and got["bit_confidence"] > 0.99


def test_human_summary(capsys, clips):
    marked, _, store = clips
    code, out, _ = verify(capsys, marked, "--records", store.dir)
    assert code == 0
    assert f"watermark found: id {format_id(WM_ID)}" in out and "session s42" in out and "signature: valid" in out


def test_a_tampered_record_is_reported_invalid(capsys, clips, tmp_path):
    marked, _, store = clips
    forged = records.RecordStore(tmp_path)
    forged.key_path.write_bytes(store.key_path.read_bytes())
    forged.key_path.chmod(0o600)
    lines = [json.loads(line) for line in store.records_path.read_text().splitlines()]
    lines[-1]["record"]["room"] = "someone-else"
    forged.records_path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    code, out, _ = verify(capsys, marked, "--records", tmp_path, "--json")
    got = json.loads(out)
    assert code == 3 and got["found"] and not got["signature_valid"] and got["record"]["room"] == "someone-else"


def test_a_clean_clip_has_no_watermark(capsys, clips):
    _, clean, store = clips
    code, out, _ = verify(capsys, clean, "--records", store.dir, "--json")
    assert code == 1
    assert json.loads(out) | {"bit_confidence": 0} == {"found": False, "session": None, "watermark_id": None,
                                                       "signature_valid": False, "record": None, "bit_confidence": 0}
    code, out, _ = verify(capsys, clean, "--records", store.dir)
    assert code == 1 and out.startswith("no watermark found")


def test_another_watermark_key_finds_nothing(capsys, clips):
    marked, _, store = clips
    code, out, _ = verify(capsys, marked, "--records", store.dir, "--watermark-key", "not the server's")
    assert code == 1 and out.startswith("no watermark found")


def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n")
    for path in (bad, tmp_path / "missing.webm"):
        r = subprocess.run([sys.executable, "-m", "worldlab.cli", "verify", str(path), "--records", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1 and f"cannot read {path}" in r.stderr
        assert "Traceback" not in r.stderr
