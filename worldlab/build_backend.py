"""PEP 517 build backend: setuptools, plus the `data-files` that setuptools leaves out of editable wheels.

Without this, `pip install -e .` would skip etc/jupyter/jupyter_server_config.d/worldlab.json, the file that
enables the player relay extension (a known setuptools limitation; hatchling cannot map kernels/ in editable mode).
"""

from __future__ import annotations

import base64
import hashlib
import pathlib
import tomllib
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (build_sdist, build_wheel, get_requires_for_build_editable,  # noqa: F401
                                   get_requires_for_build_sdist, get_requires_for_build_wheel,
                                   prepare_metadata_for_build_editable, prepare_metadata_for_build_wheel)

__all__ = ["build_editable", "build_sdist", "build_wheel", "get_requires_for_build_editable",
           "get_requires_for_build_sdist", "get_requires_for_build_wheel", "prepare_metadata_for_build_editable",
           "prepare_metadata_for_build_wheel"]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _data_files() -> list[tuple[str, pathlib.Path]]:
    """(target directory, source file) pairs from [tool.setuptools.data-files]."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("data-files", {})
    return [(target, ROOT / src) for target, sources in table.items() for src in sources]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def add_data_files(wheel: pathlib.Path) -> None:
    """Rewrite `wheel` with the data files under <dist>.data/data/ and their lines in RECORD."""
    with zipfile.ZipFile(wheel) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    record = next(info.filename for info, _ in entries if info.filename.endswith(".dist-info/RECORD"))
    data_dir = record.split("/")[0].replace(".dist-info", ".data") + "/data"
    added = [(f"{data_dir}/{target}/{src.name}", src.read_bytes()) for target, src in _data_files()]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zout:
        for info, data in entries:
            if info.filename == record:
                data = data.decode().rstrip("\n").split("\n")
                data = ("\n".join(data[:-1] + [_record_line(n, d) for n, d in added] + data[-1:]) + "\n").encode()
                for name, payload in added:
                    zout.writestr(name, payload)
            zout.writestr(info, data)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    add_data_files(pathlib.Path(wheel_directory) / name)
    return name
