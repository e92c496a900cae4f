"""`worldlab sweep`: run a notebook once per point of a YAML grid with papermill on Dask and merge the
results into one netCDF file (see worldlab.experiments.sweep and the README's Experiments section).
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a parameter grid of a notebook with papermill on Dask")
    p.add_argument("--grid", required=True, metavar="GRID.yaml",
                   help="YAML: notebook parameter -> value (fixed) or list (varied); optional `notebook:`")
    p.add_argument("--out", required=True, metavar="RESULTS.nc", help="merged results (runs kept in <stem>_runs/)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                   help="use an existing Dask distributed scheduler instead of a LocalCluster")
    p.add_argument("--no-cache", action="store_true", help="re-execute points that already have results")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per notebook cell")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the table")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from worldlab.experiments.sweep import run_sweep

    ds = run_sweep(args.grid, args.out, workers=args.workers, scheduler=args.scheduler, cache=not args.no_cache,
                   progress=not args.json, timeout_s=args.timeout)
    runs = json.loads(ds.attrs["runs"])
    counts = {s: sum(r["status"] == s for r in runs) for s in ("ok", "cached", "failed")}
    if args.json:
        print(json.dumps({"out": args.out, **counts, "runs": runs}))
    else:
        print(f"{len(runs)} runs: {counts['ok']} ran, {counts['cached']} cached, {counts['failed']} failed -> {args.out}")
        for r in runs:
            if r["status"] == "failed":
                print(f"  failed {r['point']}: {r['error']}")
    return 1 if counts["failed"] else 0
