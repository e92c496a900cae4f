"""Model plug-ins (worldlab.model.registry): built-in names, checkpoint paths, module:factory and entry points
drive `worldlab models`, eval, serve (an in-process client) and the widget's toggles; bad names are one line."""

import asyncio
import json
import pathlib

import numpy as np
import pytest

from worldlab.cli import main
from worldlab.config import Toggles
from worldlab.model.registry import resolve

from tests.model.toy_plugin import SHIFT, PanModel, register

TOY = "tests.model.toy_plugin:factory"


@pytest.fixture
def toy_entry_point(monkeypatch):
    register(monkeypatch, "toy", TOY)


def test_models_lists_the_builtins_and_what_they_support(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny"]["supports"]["weights"] == ["fp32", "w8a8", "w4a4"]
    assert rows["oracle"]["supports"] == {"weights": ["fp32"], "window": ["short"], "kv": ["none"]}
    assert rows["tiny"]["source"] == rows["oracle"]["source"] == "built-in"  # from the project's pyproject


def test_entry_point_plugin_is_listed_and_resolves(toy_entry_point, capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["toy"]["supports"] == {"weights": ["fp32"], "window": ["short", "long"], "kv": ["none"]}
    assert rows["toy"]["description"] == "Pans the first frame with the keys (a test plug-in)."
    model = resolve("toy").build(Toggles(window="long"))
    assert isinstance(model, PanModel) and model.plugin.name == "toy"


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "nope"], "unknown model 'nope': not a registered name ("),
    (["eval", "--model", "oracle", "--weights", "w4a4"], "model 'oracle' does not support weights='w4a4' (it supports weights: fp32)"),
    (["eval", "--model", TOY, "--kv", "nvfp4"], f"model '{TOY}' does not support kv='nvfp4'"),
    (["eval", "--model", "no_such_pkg:factory"], "cannot load model factory 'no_such_pkg:factory': ModuleNotFoundError: No module named"),
    (["eval", "--model", "/nowhere/x.safetensors"], "no checkpoint file at /nowhere/x.safetensors"),
    (["bench", "--model", "oracle", "--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["eval", "--model", "oracle", "--checkpoint", "x.safetensors"], "the oracle model takes no checkpoint"),
    (["serve", "--model", "nope", "--port", "1"], "unknown model 'nope'"),  # refused before anything binds
])
def test_bad_models_are_one_line_errors(argv, message, capsys):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cuda_device_without_cuda_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    for argv in (["bench", "--model", "oracle", "--device", "cuda", "--steps", "10"],
                 ["train", "--preset", "micro", "--out", "/tmp/never.safetensors", "--device", "cuda:1"],
                 ["lab", "--dry-run", "--device", "cuda"]):
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert "this machine has no CUDA device" in err and len(err.splitlines()) == 1, argv
    assert not pathlib.Path("/tmp/never.safetensors").exists()


def test_lab_hands_model_and_device_to_the_quickstart(capsys):
    """`worldlab lab --model/--device` reach the quickstart's parameters through the kernels' environment."""
    assert main(["lab", "--dry-run", "--model", "conv", "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("WORLDLAB_MODEL=conv WORLDLAB_DEVICE=cpu ") and "01_quickstart.ipynb" in line
    assert main(["lab", "--dry-run", "--model", "nope"]) != 0
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_eval_runs_a_module_factory_model(capsys):
    """The CLI's figures are the pan model's own (not the shipped model's or the oracle's)."""
    from worldlab.evaluate import evaluate_runs

    assert main(["eval", "--model", TOY, "--seeds", "1", "--steps", "6", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    direct, _ = evaluate_runs(PanModel("cpu"), [1], 6)
    assert cli["psnr_per_step"] == pytest.approx(direct["psnr_per_step"])
    assert main(["eval", "--model", "oracle", "--seeds", "1", "--steps", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["psnr_per_step"] != pytest.approx(cli["psnr_per_step"])


async def test_served_plugin_streams_and_follows_keys(toy_entry_point):
    from worldlab.transport.client import PeerClient
    from tests.transport.test_hardening import hub_on

    model = resolve("toy").build()
    async with hub_on(model) as (hub, _sched):
        client = PeerClient()
        try:
            ans = await client.connect(hub)
            await client.wait_for(lambda: client.n_frames >= 5)
            session = hub.rooms[ans["room"]].session
            client.send(type="action", keys=["right"])
            await client.wait_for(lambda: len(session.acks) == 0 and session.frame_id > 10, 5)
            await asyncio.sleep(0.3)
            (a, keys_a), (b, keys_b) = list(session.recent)[-2:]
            assert keys_b == ("right",)
            assert np.array_equal(b, np.roll(a, SHIFT["right"], axis=(0, 1)))  # panned, as the plug-in says
            assert client.n_frames >= 10
        finally:
            await client.close()


def test_widget_offers_only_supported_toggles_and_refuses_the_rest():
    from worldlab.widget.player import Player

    p = Player(TOY, prompt="a walk in the forest")
    try:
        assert p.toggle_choices == {"weights": ["fp32"], "window": ["short", "long"], "kv": ["none"]}
        with pytest.raises(ValueError, match="does not support weights='w4a4'"):
            p.media.call(p.switch(weights="w4a4"))
        assert p.weights == "fp32"
        model, _sched = p.pool.get("fp32", "long", "none")  # a new variant from the same factory
        assert isinstance(model, PanModel) and model is not p.pool.base_model
    finally:
        p.close()
    with pytest.raises(ValueError, match="does not support kv='fp8'"):
        Player(TOY, kv="fp8")


def test_player_on_a_device_this_machine_lacks_is_one_line():
    import torch

    from worldlab.widget.player import Player

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="this machine has no CUDA device") as exc:
        Player("oracle", device="cuda:1")
    assert "\n" not in str(exc.value)


def test_train_on_a_device_and_results_name_the_models_own_checkpoint(tmp_path, capsys):
    """--device cpu trains both families; a results file hashes the file the model really loaded."""
    from worldlab.experiments.provenance import checkpoint_sha256
    from worldlab.experiments.results import load_dataset
    from worldlab.model.conv import SHIPPED as CONV

    for preset in ("micro", "conv"):
        out = tmp_path / f"{preset}.safetensors"
        assert main(["train", "--preset", preset, "--steps", "2", "--device", "cpu", "--out", str(out), "--json"]) == 0
        capsys.readouterr()
        assert resolve(str(out) if preset == "micro" else "conv").build(checkpoint=str(out)).step  # loads back
    assert main(["eval", "--model", "conv", "--seeds", "1", "--steps", "2", "--out", str(tmp_path / "c.nc"),
                 "--json"]) == 0
    ds = load_dataset(tmp_path / "c.nc")
    assert ds.attrs["model"] == "conv" and ds.attrs["checkpoint_sha256"] == checkpoint_sha256(CONV)
    assert main(["bench", "--model", TOY, "--steps", "10", "--batches", "1", "--out", str(tmp_path / "b.nc"),
                 "--json"]) == 0
    ds = load_dataset(tmp_path / "b.nc")
    assert ds.attrs["checkpoint_sha256"] == "none" and ds.attrs["model"] == TOY  # no file to hash
