"""`worldlab report`: render a results file (a run or a sweep) as a self-contained HTML page or a notebook.

The experiment commands share this module; heavy imports stay inside the run functions.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="render a results file as an offline HTML report or a notebook")
    p.add_argument("results", help="results file (.nc) written by a notebook, `worldlab sweep` or --out")
    p.add_argument("--out", help="report.html (self-contained, opens offline), report.ipynb, or table.md (the "
                                 "toggle table as Markdown) (default: the results file with .html)")
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    import pathlib

    from worldlab.experiments.report import write_report

    out = args.out or pathlib.Path(args.results).with_suffix(".html")
    print(write_report(args.results, out))
    return 0
