"""Grid files for `worldlab sweep`: YAML mapping notebook parameters to values, expanded into runs.

A list varies a scalar parameter; for a list-typed parameter (its default in the notebook's parameters
cell is a list) a plain list fixes it and a list of lists varies it. `notebook:` names the notebook.
"""

from __future__ import annotations

import ast
import itertools
import json
import pathlib
from dataclasses import dataclass, field

import yaml

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
DEFAULT_NOTEBOOK = "02_three_toggles"
SET_BY_SWEEP = ("out",)  # parameters the sweep fills in per run


class GridError(ValueError):
    """A grid file that cannot be run; the message is one line naming the problem."""


@dataclass
class Grid:
    notebook: pathlib.Path
    fixed: dict
    varied: dict  # name -> list of values, in file order
    source: dict = field(default_factory=dict)  # the grid as written (stored in results attrs)

    def points(self) -> list[dict]:
        """Every combination of the varied values, each merged with the fixed ones."""
        names = list(self.varied)
        return [{**self.fixed, **dict(zip(names, combo))} for combo in itertools.product(*self.varied.values())]

    def label(self, point: dict) -> str:
        return ", ".join(f"{k}={point[k]}" for k in self.varied) or "(single run)"


def resolve_notebook(name: str) -> pathlib.Path:
    """A notebook name (`02_three_toggles`), file name, or path -> an existing .ipynb path."""
    p = pathlib.Path(name)
    for cand in (p, NOTEBOOKS / p, NOTEBOOKS / f"{name}.ipynb", p.with_suffix(".ipynb")):
        if cand.suffix == ".ipynb" and cand.is_file():
            return cand.resolve()
    raise GridError(f"notebook {name!r} not found (looked in {NOTEBOOKS})")


def notebook_parameters(path: pathlib.Path) -> dict:
    """name -> default value of the cell tagged `parameters` (a Python literal, or None when it is an
    expression). Parsed with ast rather than papermill.inspect_notebook, whose line regex trips on comments."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        raise GridError(f"notebook {path.name} has no cell tagged 'parameters'")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError:
        raise GridError(f"the parameters cell of {path.name} is not valid Python") from None
    out = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    out[t.id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError):
                    out[t.id] = None
    return out


def _is_list(v) -> bool:
    return isinstance(v, list)


def _check_value(name: str, v) -> None:
    ok = (str, int, float, bool, type(None))
    if not (isinstance(v, ok) or (_is_list(v) and all(isinstance(x, ok) or _is_list(x) for x in v))):
        raise GridError(f"grid parameter {name!r} has a value of type {type(v).__name__}; use scalars or lists")


def split(params: dict, defaults: dict) -> tuple[dict, dict]:
    """(fixed, varied) by the rule in the module docstring."""
    fixed, varied = {}, {}
    for name, v in params.items():
        _check_value(name, v)
        list_typed = _is_list(defaults.get(name))
        if list_typed:
            if _is_list(v) and v and all(_is_list(x) for x in v):
                varied[name] = v
            else:
                fixed[name] = v if _is_list(v) else [v]
        elif _is_list(v):
            if not v:
                raise GridError(f"grid parameter {name!r} is an empty list")
            varied[name] = v
        else:
            fixed[name] = v
    return fixed, varied


def _check_toggles(params: dict, varied: dict) -> None:
    """Toggle values are known before anything runs: refuse a typo now rather than as N failed runs."""
    from worldlab.config import TOGGLE_CHOICES

    for name, allowed in TOGGLE_CHOICES.items():
        if name in params:
            for v in params[name] if name in varied else [params[name]]:
                if v not in allowed:
                    raise GridError(f"grid value {v!r} for {name} is not one of {allowed}")


def parse_grid(data, where: str = "grid") -> Grid:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GridError(f"{where} must be a YAML mapping of parameter names to values")
    data = dict(data)
    notebook = resolve_notebook(str(data.pop("notebook", DEFAULT_NOTEBOOK)))
    defaults = notebook_parameters(notebook)
    unknown = sorted(set(data) - set(defaults))
    if unknown:
        raise GridError(f"unknown parameter(s) {unknown} for {notebook.name}; it takes {sorted(defaults)}")
    taken = sorted(set(data) & set(SET_BY_SWEEP))
    if taken:
        raise GridError(f"parameter(s) {taken} are set by the sweep for each run; remove them from {where}")
    missing = [k for k in SET_BY_SWEEP if k not in defaults]
    if missing:
        raise GridError(f"{notebook.name} has no {missing} parameter; the sweep needs one to collect results")
    fixed, varied = split(data, defaults)
    _check_toggles({**fixed, **varied}, varied)
    source = {"notebook": notebook.stem, **data}
    return Grid(notebook=notebook, fixed=fixed, varied=varied, source=json.loads(json.dumps(source)))


def load_grid(path) -> Grid:
    p = pathlib.Path(path)
    if not p.is_file():
        raise GridError(f"no grid file at {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise GridError(f"{p} is not valid YAML{where}") from None
    return parse_grid(data, where=str(p))
