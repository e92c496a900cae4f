"""`worldlab kernels-bench`: the kernel benchmark (same as `python -m worldlab.kernels.bench`).

Times each kernel against its torch baseline on CUDA; on CPU prints storage figures only.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("kernels-bench", help="benchmark the NVFP4/FP8 kernels (CUDA) and print storage figures")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from worldlab.kernels import bench

    return bench.main(["--json"] if args.json else [])
