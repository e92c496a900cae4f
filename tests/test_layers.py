"""The import rules of the package, read from the source (AST, no import): layers only import the layers
below them (env, doom -> model -> engine -> transport -> server/widget -> experiments), kernels import no worldlab."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "worldlab"
# What each layer must never import: everything above it.
FORBIDDEN = {
    "env": ("model", "engine", "transport", "server", "widget", "experiments"),
    "doom": ("model", "engine", "transport", "server", "widget", "experiments"),  # a world, beside env
    "model": ("engine", "transport", "server", "widget", "experiments"),
    "engine": ("transport", "server", "widget", "experiments"),
    "transport": ("model", "env", "server", "widget", "experiments"),
    "server": ("widget", "experiments"),
    "widget": ("server", "experiments"),
}


def _imports(path: Path) -> set[str]:
    """Every worldlab module `path` imports, at any depth (functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("worldlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("worldlab"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _layer_files(layer: str) -> list[Path]:
    single = PKG / f"{layer}.py"
    return [single] if single.exists() else sorted((PKG / layer).rglob("*.py"))


def _breaks(layer: str) -> list[str]:
    bad = []
    for f in _layer_files(layer):
        for mod in sorted(_imports(f)):
            parts = mod.split(".")
            if len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                bad.append(f"{f.relative_to(ROOT)} imports {mod}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_layers_below_it(layer):
    assert _layer_files(layer), f"no files for layer {layer}"
    assert _breaks(layer) == []


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The rule itself: a transport module that imports the model is reported (the checker is not blind)."""
    fake = tmp_path / "worldlab"
    (fake / "transport").mkdir(parents=True)
    (fake / "transport" / "x.py").write_text("def f():\n    from worldlab.model import start_session\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _breaks("transport") == ["worldlab/transport/x.py imports worldlab.model",
                                    "worldlab/transport/x.py imports worldlab.model.start_session"]


def test_kernels_import_nothing_of_worldlab():
    files = sorted((ROOT / "kernels").rglob("*.py")) + sorted((PKG / "kernels").rglob("*.py"))
    bad = [f"{f.relative_to(ROOT)} imports {m}" for f in files for m in _imports(f)
           if not m.startswith("worldlab.kernels")]
    assert files and bad == []
