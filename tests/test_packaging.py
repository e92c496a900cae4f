"""The wheel's package list must match the source tree, and kernels must import without triton/GPU."""

import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("worldlab", "worldlab"), ("kernels", "worldlab.kernels")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"unlisted: {sorted(found - listed)}, stale: {sorted(listed - found)}"


def test_kernels_do_not_import_worldlab_outside_the_mapping():
    # One-way dependency: kernels/ may only import itself (as worldlab.kernels) and third-party code.
    for py in (ROOT / "kernels").rglob("*.py"):
        for line in py.read_text().splitlines():
            if line.startswith(("import worldlab", "from worldlab")):
                assert line.split()[1].startswith("worldlab.kernels"), f"{py}: {line}"


def test_kernels_import_with_triton_hidden():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # any 'import triton' now raises ImportError
        "import torch\n"
        "from worldlab.kernels import nvfp4, fp8, has_triton\n"
        "from worldlab.kernels.linear import quantize_weight, quantized_linear\n"
        "from worldlab.kernels.kv_cache import make_kv_cache\n"
        "t = nvfp4.quantize(torch.ones(2, 16)); print(float(nvfp4.dequantize(t)[0, 0]))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "WORLDLAB_KERNELS": "auto"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.0"
