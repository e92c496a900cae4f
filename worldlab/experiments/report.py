"""`worldlab report`: a results file as a static, self-contained HTML page (Bokeh inline, opens offline) or
as a notebook that redraws the same figures from the file.

Sections: provenance, the toggle table, fidelity vs speed vs memory, PSNR vs step, the latency budget when
the file has one, and the failed grid points of a sweep with their errors.
"""

from __future__ import annotations

import html
import json
import pathlib

import numpy as np

from worldlab.experiments.provenance import PROVENANCE_KEYS
from worldlab.experiments.results import ResultsError, atomic_path, check_out_path, json_attr, load_dataset

SUFFIXES = (".html", ".ipynb", ".md")


def write_report(results_path, out_path) -> pathlib.Path:
    """Render `results_path` to `out_path` (.html, .ipynb, or .md: the toggle table as Markdown, for READMEs),
    written under a temporary name then renamed."""
    out = check_out_path(out_path, SUFFIXES)
    ds = load_dataset(results_path)
    check_reportable(ds, results_path)
    if out.suffix == ".html":
        text = render_html(ds, pathlib.Path(results_path).name)
    elif out.suffix == ".md":
        text = render_markdown(ds)
    else:
        text = render_notebook(ds, pathlib.Path(results_path).resolve())
    _write_atomic(out, text)
    return out


def is_drift(ds) -> bool:
    """A notebook-04 file: per-step PSNR over anchor/window/kv configurations, no toggle-table scalars."""
    return "psnr_pooled" in ds and "anchor" in ds.dims


def check_reportable(ds, path="results") -> None:
    """A report draws toggle results (psnr per seed and step) and/or a latency budget (g2g_ms)."""
    if "psnr" not in ds and "g2g_ms" not in ds:
        raise ResultsError(f"{path} holds neither psnr nor g2g_ms: nothing to report")


def _write_atomic(path: pathlib.Path, text: str) -> None:
    with atomic_path(path) as tmp:
        pathlib.Path(tmp).write_text(text, encoding="utf-8")


# --- what both versions show ---------------------------------------------------------------------------

def provenance_frame(ds):
    """The provenance attrs first, then the run's other attrs (the grid is shown on its own)."""
    import pandas as pd

    keys = [k for k in PROVENANCE_KEYS if k in ds.attrs]
    keys += [k for k in ds.attrs if k not in keys and k not in ("grid", "runs")]  # shown as their own tables
    values = [_attr_text(k, ds.attrs[k]) for k in keys]
    return pd.DataFrame({"value": values}, index=pd.Index(keys, name="attr"))


def runs_frame(runs: list[dict]):
    """One row per sweep run: its parameters, status, seconds and executed notebook's file name."""
    import pandas as pd

    return pd.DataFrame([{"point": ", ".join(f"{k}={v}" for k, v in r.get("point", {}).items()),
                          "status": r.get("status", ""), "seconds": f"{float(r.get('elapsed_s') or 0):.1f}",
                          "notebook": pathlib.Path(str(r.get("notebook", ""))).name} for r in runs])


def _attr_text(key, value) -> str:
    if key == "git_dirty":
        return "yes (uncommitted changes)" if int(value) else "no"
    if isinstance(value, np.ndarray):
        return ", ".join(str(v) for v in value.tolist())
    return str(value)


def failed_points(ds):
    """Grid points whose status is "failed", with their error text."""
    import pandas as pd

    from worldlab.experiments.plots import configurations

    rows = [(label, str(ds["error"].isel(point).values.item()) if "error" in ds else "")
            for point, label in configurations(ds) if str(ds["status"].isel(point).values.item()) == "failed"]
    return pd.DataFrame(rows, columns=["configuration", "error"]).set_index("configuration")


def status_counts(ds) -> dict:
    if "status" not in ds:
        return {}
    values, counts = np.unique(ds["status"].values.astype(str), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def latency_figures(ds) -> list:
    """The latency module's budget figures, as a list."""
    from worldlab.experiments.latency import latency_plots

    figs = latency_plots(ds)
    return list(figs) if isinstance(figs, list | tuple) else [figs]


def summary_line(ds, name: str) -> str:
    from worldlab.experiments.plots import configurations

    parts = [f"results {name}"]
    if "notebook" in ds.attrs:
        parts.append(f"notebook {ds.attrs['notebook']}")
    if "psnr" in ds:
        parts.append(f"{len(configurations(ds))} configuration(s)")
    parts += [f"{n} {s}" for s, n in status_counts(ds).items()]
    for key in ("model", "steps", "seeds"):
        if key in ds.attrs:
            parts.append(f"{key} {_attr_text(key, ds.attrs[key])}")
    return " · ".join(parts)


# --- HTML --------------------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; }
main { max-width: 1320px; margin: 0 auto; padding: 16px 20px 48px; }
h1 { font-size: 24px; margin: 8px 0 2px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin: 0 0 8px; } nav a { margin-right: 14px; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
th, td { border: 1px solid #d6d6d6; padding: 3px 5px; } th { background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.failed td { background: #fdecec; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; margin: 4px 0; }
.figure { margin: 10px 0 18px; } .note { color: #555; } .wide { overflow-x: auto; }
"""


def render_html(ds, name: str) -> str:
    import holoviews as hv
    from bokeh.embed import components

    sections, figures = _html_sections(ds)
    models = [hv.render(f, backend="bokeh") for f in figures]
    script, divs = components(models) if models else ("", ())
    js, css = _inline_resources(models)
    body = "\n".join(f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{inner}\n</section>'
                     for sid, title, inner in sections)
    for i, div in enumerate(divs):
        body = body.replace(f"<!--figure {i}-->", f'<div class="figure">{div}</div>')
    nav = " ".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title, _ in sections)
    title = f"worldlab report: {name}"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n{css}\n{js}\n</head>\n<body>\n<main>\n<h1>{html.escape(title)}</h1>\n"
            f'<p class="sub">{html.escape(summary_line(ds, name))}</p>\n<nav>{nav}</nav>\n{body}\n</main>\n'
            f"{script}\n</body>\n</html>\n")


def _inline_resources(models) -> tuple[str, str]:
    """BokehJS and the CSS the figures need, inline. Only the inline parts: panel (imported by holoviews)
    adds a relative es-module-shims URL to every bundle, which plain Bokeh figures never use."""
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.resources import INLINE

    if not models:
        return "", ""
    bundle = bundle_for_objs_and_resources(models, INLINE)
    return bundle.scripts(), "".join(f"<style>{c}</style>" for c in bundle.css_raw)


def _html_sections(ds) -> tuple[list[tuple[str, str, str]], list]:
    """(id, title, inner HTML) per section, each figure a placeholder comment numbered into the figure list."""
    from worldlab.experiments import plots

    figures: list = []

    def figure(obj) -> str:
        figures.append(obj)
        return f"<!--figure {len(figures) - 1}-->"

    grid = json_attr(ds, "grid")
    prov = _table(provenance_frame(ds).reset_index(), numeric=False)
    if grid is not None:
        lines = (f"{k}: {json.dumps(v)}" for k, v in grid.items()) if isinstance(grid, dict) else [str(grid)]
        prov += f"<p>grid:</p><pre>{html.escape(chr(10).join(lines))}</pre>"
    runs = json_attr(ds, "runs")
    if isinstance(runs, list) and runs:
        prov += "<p>runs:</p>" + _table(runs_frame(runs), numeric=False)
    out = [("provenance", "Provenance", prov)]
    if is_drift(ds):
        from worldlab.experiments.drift import drift_plots, summary_table

        out.append(("drift", "Long-horizon drift", _table(summary_table(ds).reset_index(), fmt=_fmt_metric)
                    + figure(drift_plots(ds, logx=True))
                    + f'<p class="note">{html.escape(str(ds.attrs.get("anchor_definition", "")))}</p>'))
    elif "psnr" in ds:
        table = plots.toggle_table(ds)
        out.append(("toggle-table", "Toggle table", f'<div class="wide">{_toggle_table_html(table)}</div>'))
        out.append(("fidelity-speed-memory", "Fidelity vs speed vs memory",
                            figure(plots.fidelity_speed_memory(ds)) + figure(plots.memory_bars(ds))
                            + '<p class="note">Failed grid points are left out of the plots.</p>'))
        out.append(("psnr-vs-step", "PSNR vs step", figure(plots.psnr_vs_step(ds))
                            + '<p class="note">PSNR of the mean MSE over seeds at each step, so an exact '
                              'seed cannot hide another seed\'s error.</p>'))
    if "g2g_ms" in ds:
        latency = "".join(figure(f) for f in latency_figures(ds))
        stages = plots.stage_table(ds)
        if len(stages):
            latency += _table(stages.reset_index(), fmt=_fmt_metric)
        out.append(("latency", "Latency budget", latency or '<p class="note">no stage percentiles</p>'))
    if "status" in ds:
        out.append(("failed", "Failed grid points", _failed_html(ds)))
    return out, figures


def _failed_html(ds) -> str:
    failed = failed_points(ds)
    if not len(failed):
        return f'<p class="note">None: all {int(ds["status"].size)} grid points completed.</p>'
    items = "".join(f"<li><b>{html.escape(label)}</b><pre>{html.escape(err)}</pre></li>"
                    for label, err in failed["error"].items())
    return f"<ul>{items}</ul>"


def _fmt_metric(column: str, value) -> str:
    if isinstance(value, str):
        return value
    if value is None or not np.isfinite(value):
        return "—"
    if "bytes" in column or "kbit" in column or column == "collapsed seeds":
        return f"{value:,.0f}"
    return f"{value:.4f}" if column == "SSIM" else f"{value:.2f}"


def _toggle_table_html(df) -> str:
    from worldlab.experiments.plots import TOGGLE_NAMES, column_groups

    # The label repeats the toggle columns; it is kept only when they are absent (it is the plots' key).
    if not all(n in df for n in TOGGLE_NAMES):
        df = df.reset_index()
    groups = column_groups(df)
    classes = list(df["status"]) if "status" in df else None
    return _table(df, groups=groups, row_classes=classes, fmt=_fmt_metric)


def _table(df, groups=None, row_classes=None, fmt=lambda c, v: str(v), numeric=True) -> str:
    """An HTML table of a DataFrame (escaped), with an optional group header row over runs of columns."""
    esc = html.escape
    head = ""
    if groups:
        runs: list[list] = []
        for g, _ in groups:
            if runs and runs[-1][0] == g:
                runs[-1][1] += 1
            else:
                runs.append([g, 1])
        head = "<tr>" + "".join(f'<th colspan="{n}">{esc(g)}</th>' for g, n in runs) + "</tr>"
    head += "<tr>" + "".join(f"<th>{esc(str(c))}</th>" for c in df.columns) + "</tr>"
    rows = []
    for i, rec in enumerate(df.itertuples(index=False)):
        cls = f' class="{esc(str(row_classes[i]))}"' if row_classes else ""
        cells = "".join(_cell(fmt(str(c), v), numeric) for c, v in zip(df.columns, rec))
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _cell(text: str, numeric: bool) -> str:
    numeric = numeric and (text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit() or text == "—")
    return f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>"


# --- notebook --------------------------------------------------------------------------------------------

MD_FORMATS = {"SSIM": ".3f", "collapsed seeds": ".0f"}


def render_markdown(ds) -> str:
    """The toggle table as a Markdown table (failed points show "failed"), and where it came from."""
    from worldlab.experiments.plots import toggle_table

    if is_drift(ds):
        from worldlab.experiments.drift import summary_table

        df = summary_table(ds)
    else:
        df = toggle_table(ds)
    df = df.drop(columns=[c for c in ("weights", "window", "kv") if c in df.columns])  # the label names them
    head = ["configuration", *df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in df.iterrows():
        cells = [label] + [_md_cell(c, v) for c, v in row.items()]
        lines.append("| " + " | ".join(cells) + " |")
    commit = str(ds.attrs.get("git_commit", "unknown"))[:10] + (" (dirty)" if int(ds.attrs.get("git_dirty", 0)) else "")
    where = (f"commit {commit}, checkpoint {str(ds.attrs.get('checkpoint_sha256', 'none'))[:16]}, "
             f"{ds.attrs.get('machine_cpu', '?')} x {ds.attrs.get('machine_cores', '?')} cores, GPU "
             f"{ds.attrs.get('machine_gpu', 'none')}, torch {ds.attrs.get('torch_version', '?')}, "
             f"started {ds.attrs.get('started_at', '?')}")
    return "\n".join(lines) + f"\n\n{where}\n"


def _md_cell(column: str, value) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if "bytes" in column.lower():
        return format(float(value), ".0f")
    if 0 < abs(float(value)) < 0.1:  # small statistics (histogram distances) would all print as 0.00
        return format(float(value), ".4f")
    return format(float(value), MD_FORMATS.get(column, ".2f"))


def render_notebook(ds, results: pathlib.Path) -> str:
    """A notebook whose cells load `results` (a papermill parameter) and draw the report's figures."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(f"# worldlab report: {results.name}\n\nWritten by `worldlab report`; run all cells to redraw "
           "every figure from the results file."),
        code(f"results = {str(results)!r}", metadata={"tags": ["parameters"]}),
        code("import holoviews as hv\n\nfrom worldlab.experiments import plots, report\n"
             "from worldlab.experiments.results import json_attr, load_dataset\n\n"
             'hv.extension("bokeh")\nds = load_dataset(results)\nprint(report.summary_line(ds, results))'),
        md("## Provenance"),
        code('print(json_attr(ds, "grid", "(not a sweep)"))\nreport.provenance_frame(ds)'),
    ]
    if "psnr" in ds:
        cells += [md("## Toggle table"), code("plots.toggle_table(ds)"),
                  md("## Fidelity vs speed vs memory"),
                  code("(plots.fidelity_speed_memory(ds) + plots.memory_bars(ds)).cols(1)"),
                  md("## PSNR vs step\n\nPSNR of the mean MSE over seeds at each step."),
                  code("plots.psnr_vs_step(ds)")]
    if "g2g_ms" in ds:
        cells += [md("## Latency budget"),
                  code("for fig in report.latency_figures(ds):\n    display(fig)\nplots.stage_table(ds)")]
    if "status" in ds:
        cells += [md("## Failed grid points"), code("report.failed_points(ds)")]
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    return nbformat.writes(nb)
