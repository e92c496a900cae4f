"""environment.yml must mirror pyproject.toml's dependencies (pyproject is the one source of truth)."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def names(reqs):
    return {re.split(r"[<>=!;\[ ]", r.strip(), maxsplit=1)[0].lower() for r in reqs if r.strip()}


def test_environment_yml_lists_every_pyproject_dependency():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = names(proj["dependencies"]) | names(proj["optional-dependencies"]["dev"])
    env_lines = [l.strip()[2:] for l in (ROOT / "environment.yml").read_text().splitlines()
                 if l.strip().startswith("- ") and not l.strip().startswith("- -e")]
    have = names(env_lines)
    assert want <= have, f"missing from environment.yml: {sorted(want - have)}"
    assert "torch==2.13.0" in (ROOT / "environment.yml").read_text()
