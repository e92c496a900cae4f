"""A model that implements the protocol and nothing more works everywhere; one that breaks it is refused in one
line naming the model: a factory that raises or returns the wrong type, frames of the wrong dtype, a plug-in
that fails to import, a checkpoint of another architecture, and a hot-switch to a variant that cannot build."""

import json
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from worldlab.cli import main
from worldlab.model.conv import SHIPPED as CONV
from worldlab.model.registry import resolve
from worldlab.model.world_model import TransformerWorldModel

from tests.model.toy_plugin import PanModel, register

TOY = "tests.model.toy_plugin"


@pytest.fixture
def broken_entry_point(monkeypatch):
    """An installed package whose `worldlab.models` entry point fails while its module imports."""
    register(monkeypatch, "gpu-only", "tests.model.broken_plugin:factory")


@pytest.mark.parametrize("spec, message", [
    (f"{TOY}:not_a_model_factory", f"model '{TOY}:not_a_model_factory' returned a dict, not a WorldModel "
                                    "(it has no init_state, prefill, step, recache, reset, kv_bytes)"),
    (f"{TOY}:float_frames_factory", f"model '{TOY}:float_frames_factory' step returned float32 (1, 64, 64, 3) "
                                     "frames; the protocol wants uint8 (1, 64, 64, 3)"),
    ("gpu-only", "cannot load model factory 'tests.model.broken_plugin:factory': RuntimeError: this plug-in "
                 "needs libcuda.so.1"),
])
def test_a_model_that_breaks_the_protocol_is_one_line_naming_it(broken_entry_point, spec, message, capsys):
    assert main(["eval", "--model", spec, "--seeds", "1", "--steps", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_factory_that_raises_is_one_line_naming_the_model(capsys):
    spec = f"{TOY}:raising_factory"
    assert main(["eval", "--model", spec, "--window", "long", "--seeds", "1", "--steps", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert f"model '{spec}' failed to build: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in err
    assert len(err.splitlines()) == 1 and "more driver text" not in err


def test_a_plugin_that_fails_to_import_does_not_hide_the_others(broken_entry_point, capsys):
    assert main(["models", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert {"tiny", "conv", "oracle"} <= names and "gpu-only" not in names


def test_checkpoints_are_loaded_as_the_architecture_that_wrote_them(micro_ckpt, capsys):
    assert resolve(str(CONV)).build().describe()["model"] == "conv"  # a bare path: its metadata says conv
    assert isinstance(resolve(str(micro_ckpt[0])).build(), TransformerWorldModel)
    assert main(["eval", "--model", "tiny", "--checkpoint", str(CONV), "--seeds", "1", "--steps", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert f"checkpoint {CONV} holds a conv model, not a tiny transformer: use --model conv" in err
    assert main(["eval", "--model", "conv", "--checkpoint", str(micro_ckpt[0]), "--seeds", "1", "--steps", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert "holds a tiny transformer, not a conv model: use --model tiny" in err and len(err.splitlines()) == 1


async def test_healthz_serves_a_model_with_nothing_but_the_protocol():
    from worldlab.server import build_app

    model = PanModel("cpu")  # no describe(), no plug-in: built by hand
    assert not hasattr(model, "describe")
    async with TestClient(TestServer(build_app(model), host="127.0.0.1")) as client:
        r = await client.get("/healthz")
        body = await r.json()
    assert r.status == 200 and body["ok"] and body["model"] == {"model": "PanModel"}


def test_a_failed_hot_switch_keeps_the_session_streaming():
    from worldlab.widget.player import Player

    p = Player(f"{TOY}:raising_factory", prompt="a walk in the forest")
    try:
        with pytest.raises(ValueError, match="failed to build: RuntimeError: CUDA out of memory") as exc:
            p.media.call(p.switch(window="long"))
        assert "\n" not in str(exc.value)
        assert (p.weights, p.window, p.kv) == ("fp32", "short", "none")
        before = p.room.session.frame_id
        time.sleep(0.5)
        assert p.room.session.frame_id >= before + 10 and p.room.session.fault is None  # still 30 fps
    finally:
        p.close()
