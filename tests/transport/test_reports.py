"""The page's `report` over the ctl channel, end to end with aiortc clients against a PeerHub (oracle):
Room.page_report returns a player's fresh report (never a spectator's, never a stale one), a bad
report gets an `error` and the stream goes on, a dropped peer's report goes with it, /metrics shows the
page-side stages, and player.js sends exactly protocol.REPORT_FIELDS."""

import asyncio
import re
from pathlib import Path

import pytest

from tests.transport.test_hardening import errors, hub_on, until
from tests.transport.test_inprocess import Client
from worldlab.server import metrics as prom
from worldlab.transport import protocol

pytestmark = pytest.mark.timeout(120)

PLAYER_REPORT = {"fps_actual": 29.9, "g2g_ms": 61.5, "g2g_ms_p95": 80.25, "rtt_ms": 1.5, "capture_ms": 0.5,
                 "decode_ms": 2.0, "frames": 300, "new_frames": 290, "dropped_frames": 0, "first_frame_ms": None}


async def test_reports_reach_frontend_stats_players_only_and_fresh_only():
    async with hub_on() as (hub, _sched):
        player, viewer = Client(), Client()
        try:
            ans = await player.connect(hub)
            await viewer.connect(hub, room=ans["room"], role="viewer")
            room = hub.rooms[ans["room"]]
            assert room.page_report() is None  # nothing reported yet

            player.send(type="report", **PLAYER_REPORT)
            await until(lambda: room.page_report() is not None)
            fe = room.page_report()
            assert set(fe) == {*protocol.REPORT_FIELDS, "age_s"}
            assert {k: fe[k] for k in PLAYER_REPORT} == PLAYER_REPORT
            assert fe["interval_ms_p95"] is None  # not sent: None, like a null
            assert 0 <= fe["age_s"] < 3.0

            # A spectator's report is stored (and accepted: no error) but never returned.
            await asyncio.sleep(0.3)
            viewer.send(type="report", g2g_ms=999.0, rtt_ms=9.0)
            await until(lambda: len(room.reports) == 2)
            assert room.page_report()["g2g_ms"] == 61.5  # still the player's, though older
            assert room.page_report(max_age_s=0.2) is None  # the player's is stale; the viewer's is ignored
            assert errors(viewer) == []

            # The freshest player report wins.
            player.send(type="report", g2g_ms=70.0)
            await until(lambda: room.page_report(max_age_s=0.2) is not None)
            fe = room.page_report(max_age_s=0.2)
            assert fe["g2g_ms"] == 70.0 and fe["rtt_ms"] is None and fe["age_s"] <= 0.2

            # /metrics: the page-side stages come from the player's report, per room and aggregated.
            loopback = prom.render(prom.registry_for(hub)).decode()
            assert f'worldlab_g2g_ms{{room="{room.id}"}} 70.0' in loopback
            public = prom.render(prom.registry_for(hub, per_room=False)).decode()
            assert re.search(r"^worldlab_g2g_ms 70\.0$", public, re.M), public
            assert not re.search(r"^worldlab_rtt_ms ", public, re.M)  # the page had no rtt figure: no sample, not 0

            # A dropped spectator's report goes with its channel.
            await viewer.pc.close()
            await until(lambda: room.viewers == 0 and len(room.reports) == 1)
        finally:
            await viewer.pc.close()
            await player.pc.close()


async def test_a_bad_report_gets_bad_field_and_the_stream_goes_on():
    async with hub_on() as (hub, _sched):
        client = Client()
        try:
            ans = await client.connect(hub)
            room = hub.rooms[ans["room"]]
            await client.wait_for(lambda: len(client.frames) >= 5)
            client.send(type="report", g2g_ms=-1.0)
            client.send(type="report", g2g_ms=10.0, width=256)  # not a report field
            client.ch.send('{"v":1,"seq":50,"type":"report","rtt_ms":NaN}')
            await client.wait_for(lambda: len(errors(client)) >= 3)
            assert errors(client) == ["bad_field"] * 3
            assert "'width'" in [m for m in client.msgs if m["type"] == "error"][1]["message"]
            assert room.page_report() is None  # nothing of a refused report is kept
            n = len(client.frames)
            await client.wait_for(lambda: len(client.frames) >= n + 10)  # still streaming
            client.send(type="report", g2g_ms=12.0)
            await until(lambda: (room.page_report() or {}).get("g2g_ms") == 12.0)
        finally:
            await client.pc.close()


def test_player_js_reports_exactly_the_protocol_fields():
    js = (Path(protocol.__file__).parents[1] / "static" / "player.js").read_text()
    listed = re.search(r"const reported = \[([^\]]*)\]", js)
    assert listed, "player.js no longer lists its report fields as `const reported = [...]`"
    assert tuple(re.findall(r'"(\w+)"', listed.group(1))) == protocol.REPORT_FIELDS
