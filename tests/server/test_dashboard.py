"""The live dashboard reads a running server: per-room figures from a trusted scrape, one mean series from
an untrusted one, a clear line when the server is down; `worldlab dashboard` refuses bad arguments in one line."""

import asyncio
import math

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from worldlab.cli import main
from worldlab.engine.oracle import EnvOracle
from worldlab.server import build_app
from worldlab.server import metrics as prom
from worldlab.server.app import HUB, PUBLIC_REGISTRY
from worldlab.server.dashboard import ALL_ROOMS, WATCHED, Dashboard, parse
from worldlab.transport.client import PeerClient

pytestmark = pytest.mark.timeout(120)


async def test_dashboard_follows_a_live_room_and_says_when_the_server_is_gone():
    app = build_app(EnvOracle(seed=3))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    client = PeerClient(keep_frames=False)
    try:
        async with aiohttp.ClientSession() as http:
            ans = await client.connect_http(http, url + "/offer", prompt="a snowy field")
        await asyncio.sleep(2.5)  # fps and drops are rates over the last seconds
        dash = Dashboard(url)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, dash.poll) == 1  # urllib blocks: off the server's loop
        (row,) = dash.buffer.data.to_dict("records")
        assert row["room"] == ans["room"] and row["fps_target"] == 30 and 20 <= row["fps_actual"] <= 31
        assert 0 <= row["drop_pct"] < 50 and row["bitrate_kbps"] > 0 and row["relay_pct"] == 0
        assert math.isnan(row["g2g_p95_ms"])  # no page has reported: the PeerClient is not a player page
        assert dash.server["rooms"] == 1 and dash.server["slo_g2g_ms"] > 0
        assert "1 live rooms" in dash.summary() and "no page reports yet" in dash.summary()
        # What a non-loopback scrape without an admin token sees: one unlabelled mean, no room ids.
        rooms, _ = parse(prom.render(app[PUBLIC_REGISTRY]).decode())
        assert list(rooms) == [ALL_ROOMS] and set(rooms[ALL_ROOMS]) <= set(WATCHED)
        assert ans["room"] not in prom.render(app[PUBLIC_REGISTRY]).decode()
    finally:
        await client.close()
        await server.close()
    assert not app[HUB].rooms
    assert await asyncio.get_running_loop().run_in_executor(None, dash.poll) == 0
    assert dash.error.startswith(f"cannot reach {url}/metrics") and dash.error in dash.summary()
    assert len(dash.buffer.data) == 1  # a failed scrape adds no rows


@pytest.mark.parametrize("argv, message", [
    (["dashboard", "--server", "ftp://host"], "--server must be an http(s) URL, got 'ftp://host'"),
    (["dashboard", "--port", "70000"], "--port must be 1..65535, got 70000"),
    (["dashboard", "--period", "0"], "--period must be 0.2..60 seconds, got 0"),
    (["dashboard", "--period", "soon"], "--port must be a whole number and --period seconds"),
    (["dashboard", "--server", "http://127.0.0.1:1"], "cannot reach http://127.0.0.1:1/metrics"),
])
def test_bad_dashboard_arguments_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
