"""The Grafana dashboard reads only what /metrics serves: every metric an expression names is a family of a
live scrape, every stage it filters on is one the histograms observe, and the committed file is current."""

import json
import pathlib
import re

from aiohttp.test_utils import TestClient, TestServer

from worldlab.cli import main
from worldlab.engine.oracle import EnvOracle
from worldlab.server import build_app, grafana
from worldlab.server.metrics import StageHistograms

COMMITTED = pathlib.Path(__file__).resolve().parents[2] / "docs" / "grafana" / "worldlab.json"


def exprs(board: dict) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


async def test_every_panel_reads_a_metric_the_server_exports():
    async with TestClient(TestServer(build_app(EnvOracle()), host="127.0.0.1")) as client:
        text = await (await client.get("/metrics")).text()
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    used = {name for e in exprs(grafana.dashboard()) for name in re.findall(r"\bworldlab_[a-z0-9_]+", e)}
    assert len(used) == 14
    for name in used:
        base = name.removesuffix("_bucket")
        assert base in families, f"{name} is not exported"
        assert (families[base] == "histogram") == name.endswith("_bucket"), name
    stages = {s for e in exprs(grafana.dashboard()) for m in re.findall(r'stage=~"([^"]+)"', e) for s in m.split("|")}
    assert stages == set(StageHistograms.STAGES)  # every observed stage has a panel, none reads a missing one


def test_layout_and_the_committed_file(tmp_path, capsys):
    board = grafana.dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    cells = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]}
    assert len(cells) == len(ids)  # no two panels on top of each other
    assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in board["panels"] for t in p["targets"])
    out = tmp_path / "board.json"
    assert main(["grafana", "--out", str(out)]) == 0 and "12 panels" in capsys.readouterr().out
    assert json.loads(out.read_text()) == board == json.loads(COMMITTED.read_text()), \
        "docs/grafana/worldlab.json is stale: worldlab grafana --out docs/grafana/worldlab.json"


def test_bad_out_paths_are_one_line(capsys):
    for argv, message in ((["grafana", "--out", "board.yaml"], "--out must be a .json file"),
                          (["grafana", "--out", "/no/such/dir/board.json"], "--out: no directory /no/such/dir")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
