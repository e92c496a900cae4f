"""Signed session records: sign/verify, tampering and foreign keys refused, the key file private (0600), and
PeerHub giving each room a watermark id, a signed record and a track that marks every frame."""

import json
import stat

import pytest

from worldlab.config import SessionConfig
from worldlab.engine import Scheduler
from worldlab.engine.oracle import EnvOracle
from worldlab.security import records
from worldlab.security.watermark import format_id
from worldlab.transport.peer import PeerHub

pytestmark = pytest.mark.timeout(60)


def a_record(**kw) -> dict:
    return records.make_record("s7", "00112233aabbccdd", "room-1", records.model_hash({"name": "oracle"}), **kw)


def test_sign_then_verify(tmp_path):
    store = records.RecordStore(tmp_path)
    rec = a_record()
    assert rec["tenant"] is None and rec["start"].endswith("+00:00")
    assert records.verify(rec, store.sign(rec), store.public_key())


@pytest.mark.parametrize("field,value", [("room", "room-2"), ("watermark_id", "00112233aabbccde"),
                                         ("tenant", "acme"), ("start", "2020-01-01T00:00:00+00:00")])
def test_a_tampered_record_fails(tmp_path, field, value):
    store = records.RecordStore(tmp_path)
    rec = a_record()
    sig = store.sign(rec)
    assert not records.verify({**rec, field: value}, sig, store.public_key())


def test_another_key_or_a_garbled_signature_fails(tmp_path):
    mine, theirs = records.RecordStore(tmp_path / "a").prepare(), records.RecordStore(tmp_path / "b")
    rec = a_record()
    assert not records.verify(rec, theirs.sign(rec), mine.public_key())
    assert not records.verify(rec, "not base64!", mine.public_key())


def test_key_file_is_created_private_and_reused(tmp_path):
    store = records.RecordStore(tmp_path / "cfg")
    assert store.public_key() is None  # nothing is created until something is signed
    rec = a_record()
    sig = store.sign(rec)
    mode = stat.S_IMODE(store.key_path.stat().st_mode)
    assert store.key_path.name == "signing_key.pem" and mode == 0o600
    assert b"PRIVATE KEY" in store.key_path.read_bytes()
    assert records.verify(rec, sig, records.RecordStore(tmp_path / "cfg").public_key())  # a new store, same key


def test_append_and_find_by_watermark_id(tmp_path):
    store = records.RecordStore(tmp_path)
    first, second = a_record(), {**a_record(), "watermark_id": "ffffffffffffffff", "session": "s8"}
    store.append(first)
    store.append(second)
    with open(store.records_path, "a") as f:
        f.write('{"torn": \n')  # a half-written line does not hide the others
    rec, sig = store.find("ffffffffffffffff")
    assert rec == second and records.verify(rec, sig, store.public_key())
    assert store.find("0000000000000000") is None
    assert all(json.loads(line)["signature"] for line in store.records_path.read_text().splitlines()[:2])


async def hub(model, **kw):
    sched = Scheduler(model).start()
    return PeerHub(model, sched, fps=30.0, **kw), sched


async def test_each_room_gets_a_watermark_id_a_signed_record_and_a_marking_track(tmp_path):
    model = EnvOracle(seed=5)
    store = records.RecordStore(tmp_path)
    h, sched = await hub(model, records=store)
    try:
        a, b = await h.create_room(quality="low"), await h.create_room()
        assert a.watermark_id != b.watermark_id and 0 <= a.watermark_id < 1 << 64
        rec, sig = store.find(format_id(a.watermark_id))
        assert rec["session"] == a.session.id and rec["room"] == a.id and rec["tenant"] is None
        assert rec["model_sha256"] == records.model_hash(model.describe())
        assert records.verify(rec, sig, store.public_key())
        seen = []
        mark = a.track.watermark
        assert mark.id == a.watermark_id
        a.track.watermark = lambda big: seen.append(big.shape) or mark(big)
        await a.track.recv()
        await a.track.recv()
        assert seen == [(128, 128, 3)] * 2  # the upscaled frame is marked, every frame
    finally:
        await h.close()
        sched.stop()


async def test_watermark_off_and_no_store_write_nothing(tmp_path):
    h, sched = await hub(EnvOracle(seed=5), config=SessionConfig(watermark=False))
    try:
        r = await h.create_room()
        assert r.watermark_id is None and r.track.watermark is None and h.records is None
    finally:
        await h.close()
        sched.stop()
