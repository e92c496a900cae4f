"""Cost controls (issue 13): sessions per tenant, frame caps per room and tenant within a window (the client
gets `error` frame_cap and the room ends; new offers 429 + Retry-After), the model-seconds anomaly alert and
its metric."""

import asyncio
import logging
import time

import pytest

from worldlab.config import SessionConfig
from worldlab.server import metrics as prom
from worldlab.transport.caps import AnomalyWatch, FrameLedger
from worldlab.transport.client import PeerClient
from worldlab.transport.rooms import OfferError

from tests.transport.test_hardening import hub_on, until

pytestmark = pytest.mark.timeout(120)


# -- the ledger and the detector, on a fake clock --------------------------------------------------------
def test_ledger_counts_frames_within_the_window_only_and_forgets_idle_keys():
    led = FrameLedger(window_s=120.0)  # 1 s buckets
    led.charge("a", 10, now=1000.5)
    led.charge("a", 20, now=1030.2)
    led.charge("b", 5, now=1030.2)
    assert led.used("a", 1030.9) == 30 and led.used("b", 1030.9) == 5
    # Cap 25: the 30 used drop below it when the 10-frame bucket leaves, at 1000 + 120 = 1120.
    assert led.retry_after("a", 25, now=1100.0) == pytest.approx(20.0)
    # Cap 5: both buckets must leave; the second at 1030 + 120.
    assert led.retry_after("a", 5, now=1100.0) == pytest.approx(50.0)
    assert led.retry_after("a", 31, now=1100.0) == 0.0
    assert led.used("a", 1121.5) == 20  # the first charge left the window (1000 + 120 < 1121)
    assert led.used("a", 1151.0) == 0 and led.used("b", 1151.0) == 0
    assert led.keys() == 0  # no memory kept for keys with nothing in the window


def test_anomaly_alert_is_absolute_or_relative_to_the_fleet_median_once_per_episode():
    w = AnomalyWatch(share=0.5, factor=3.0, min_fleet=3)
    assert w.check({"s1": 0.1, "s2": 0.1, "s3": 0.25}) == []  # 2.5x the median: not yet
    alerts = w.check({"s1": 0.1, "s2": 0.1, "s3": 0.35})
    assert [(sid, why.split()[0]) for sid, _r, why in alerts] == [("s3", "3.5x")]
    assert w.check({"s1": 0.1, "s2": 0.1, "s3": 0.35}) == []  # the same episode: no second alert
    assert w.check({"s1": 0.1, "s2": 0.1, "s3": 0.1}) == []  # re-armed
    assert [a[0] for a in w.check({"s1": 0.1, "s2": 0.1, "s3": 0.4})] == ["s3"]
    assert w.check({"s1": 0.1, "s2": 0.45}) == []  # two sessions: no median, and under the absolute share
    assert [a[0] for a in w.check({"s1": 0.6})] == ["s1"]  # absolute, even alone
    assert w.counts["model_seconds"] == 3


def test_relay_share_alert_fires_once_per_episode_above_its_threshold():
    w = AnomalyWatch(share=0.5, factor=3.0, relay_pct=50.0)
    assert [w.check_relay(p) for p in (0.0, 50.0, 75.0, 100.0, 40.0, 60.0)] == [False, False, True, False, False, True]
    assert w.counts["relay_share"] == 2
    off = AnomalyWatch(share=0.5, factor=3.0, relay_pct=0.0)
    assert not off.check_relay(100.0) and off.counts["relay_share"] == 0


# -- admission ----------------------------------------------------------------------------------------
async def test_sessions_per_tenant_are_capped_and_anonymous_sessions_share_one_tenant():
    cfg = SessionConfig(max_sessions=8, max_sessions_per_tenant=2)
    async with hub_on(config=cfg) as (hub, _sched):
        for tenant in ("acme", "acme", "zeta", None, None):
            await hub.create_room(tenant=tenant)
        for tenant in ("acme", None):
            with pytest.raises(OfferError) as err:
                await hub.create_room(tenant=tenant)
            assert (err.value.status, err.value.code) == (503, "tenant_full")
        await hub.create_room(tenant="zeta")  # another tenant is not affected
        assert len(hub.rooms) == 6 and hub.caps.hits["tenant_full"] == 2


# -- frame caps, live ---------------------------------------------------------------------------------
async def test_room_frame_cap_ends_the_session_with_an_error_and_refuses_the_room_id_until_the_window_frees():
    cap = 45  # 1.5 s at 30 fps
    cfg = SessionConfig(room_frame_cap=cap, frame_cap_window_s=600.0, caps_check_s=0.2)
    async with hub_on(config=cfg) as (hub, _sched):
        client = PeerClient(keep_frames=False)
        try:
            await client.connect(hub, room="paid-demo", tenant="acme")
            room = hub.rooms["paid-demo"]
            await client.wait_for(lambda: "frame_cap" in client.errors(), timeout=20)
            made = room.session.frame_id + 1
            err = next(m for m in client.msgs if m["type"] == "error")
            await until(lambda: not hub.rooms, timeout=5)
        finally:
            await client.close()
        assert cap <= made <= cap + 30, made  # checked every 0.2 s: a few frames over at most
        assert 0 < err["retry_after_s"] <= 600 and "paid-demo" in err["message"]
        with pytest.raises(OfferError) as refused:
            await hub.create_room(room="paid-demo", tenant="acme")
        assert (refused.value.status, refused.value.code) == (429, "frame_cap")
        assert 550 < refused.value.retry_after_s <= 600  # the frames were made moments ago
        await hub.create_room(room="another", tenant="acme")  # a room cap, not a tenant cap
        assert hub.caps.hits["frame_cap"] == 2


async def test_tenant_frame_cap_sums_the_tenants_rooms_and_spares_other_tenants():
    cap = 90
    cfg = SessionConfig(tenant_frame_cap=cap, frame_cap_window_s=600.0, caps_check_s=0.2)
    async with hub_on(config=cfg) as (hub, _sched):
        a1, a2 = await hub.create_room(tenant="acme"), await hub.create_room(tenant="acme")
        other = await hub.create_room(tenant="zeta")
        await until(lambda: a1.id not in hub.rooms and a2.id not in hub.rooms, timeout=20)
        made = a1.session.frame_id + a2.session.frame_id + 2
        assert cap <= made <= cap + 60, made  # two rooms, 30 fps, checked every 0.2 s
        assert a1.session.frame_id < cap and a2.session.frame_id < cap  # neither alone reached it
        assert other.id in hub.rooms  # zeta's budget is its own
        with pytest.raises(OfferError) as refused:
            await hub.create_room(tenant="acme")
        assert (refused.value.status, refused.value.code) == (429, "frame_cap")


# -- anomaly alert ------------------------------------------------------------------------------------
class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


async def test_model_seconds_anomaly_is_logged_once_and_counted_in_metrics():
    # Any model time at all is "too much": the oracle's sub-millisecond steps trip it once the session's
    # metrics horizon (5 s) is full.
    cfg = SessionConfig(anomaly_model_share=1e-9, caps_check_s=0.2)
    handler, caps_log = _Lines(), logging.getLogger("worldlab.transport.caps")
    caps_log.addHandler(handler)
    try:
        async with hub_on(config=cfg) as (hub, _sched):
            room = await hub.create_room(tenant="acme")
            await until(lambda: hub.caps.anomalies.counts["model_seconds"] >= 1, timeout=20)
            await asyncio.sleep(1.0)  # five more checks of the same episode: no second alert
            text = prom.render(prom.registry_for(hub, per_room=False)).decode()
    finally:
        caps_log.removeHandler(handler)
    assert 'worldlab_anomalies_total{kind="model_seconds"} 1.0' in text
    assert "worldlab_draining 0.0" in text
    assert len([ln for ln in handler.lines if ln.startswith("anomaly:")]) == 1
    assert room.session.id in handler.lines[0] and "acme" in handler.lines[0]


# -- the config file ----------------------------------------------------------------------------------
def test_caps_come_from_the_serve_config_file_and_bad_values_name_the_field(tmp_path):
    from worldlab.commands.serve_cmd import check_args
    from tests.test_config import serve_args

    path = tmp_path / "caps.yaml"
    path.write_text("max_sessions_per_tenant: 2\nroom_frame_cap: 1800\ntenant_frame_cap: 9000\n"
                    "frame_cap_window_s: 600\nanomaly_model_share: 0.8\ndrain_deadline_s: 10\n")
    cfg = check_args(serve_args("--config", str(path)))
    assert (cfg.max_sessions_per_tenant, cfg.room_frame_cap, cfg.tenant_frame_cap, cfg.frame_cap_window_s,
            cfg.anomaly_model_share, cfg.drain_deadline_s) == (2, 1800, 9000, 600, 0.8, 10)
    for text, needle in (("room_frame_cap: -1\n", r"^room_frame_cap must be 0 or more, got -1"),
                         ("frame_cap_window_s: 0\n", r"^frame_cap_window_s must be a positive number"),
                         ("drain_deadline_s: .nan\n", r"^drain_deadline_s must be 0 or more")):
        path.write_text(text)
        with pytest.raises(ValueError, match=needle):
            check_args(serve_args("--config", str(path)))


async def test_sessions_shorter_than_the_check_interval_are_still_charged():
    # The caps are never checked while these sessions live (caps_check_s 60 s): frames are charged when a
    # room closes, so reconnecting often cannot dodge a tenant's budget.
    cap = 40
    cfg = SessionConfig(tenant_frame_cap=cap, frame_cap_window_s=600.0, caps_check_s=60.0)
    async with hub_on(config=cfg) as (hub, _sched):
        made = 0
        while True:
            client = PeerClient(keep_frames=False)
            try:
                await client.connect(hub, tenant="acme")
                room = next(iter(hub.rooms.values()))
                await until(lambda: room.session.frame_id >= 14, timeout=10)
            finally:
                await client.close()
            await until(lambda: not hub.rooms, timeout=10)
            made += room.session.frame_id + 1
            if made >= cap:
                break
        with pytest.raises(OfferError) as refused:
            await hub.create_room(tenant="acme")
        assert (refused.value.status, refused.value.code) == (429, "frame_cap")
        assert hub.caps.ledger.used("tenant:acme", time.monotonic()) == made
