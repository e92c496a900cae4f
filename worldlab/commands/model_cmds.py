"""`worldlab train`, `worldlab eval`, `worldlab bench`: train, evaluate and time the world model.

Heavy imports happen inside each run function so `worldlab --help` stays fast.
"""

from __future__ import annotations

from worldlab.commands import add_model_arguments, build_model, threads_arg

import json


def _toggles(p) -> None:
    add_model_arguments(p)
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="torch CPU threads (default 1: a model step gains nothing from more and stalls when the "
                        "CPU is busy; worldlab.threads)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None, metavar="FILE.nc",
                   help="also write the figures as an xarray/netCDF results file with provenance")


def register(sub) -> None:
    t = sub.add_parser("train", help="train a world model from scratch (reproduces the shipped checkpoint)")
    t.add_argument("--preset", default="tiny",
                   help="micro | tiny | conv (the conv plug-in: worldlab.train_conv) | doom (the DOOM world model "
                        "over the shipped DOOM tokenizer) | doom-tokenizer")
    t.add_argument("--out", required=True, help="output .safetensors path (a .metrics.jsonl log goes beside it)")
    t.add_argument("--steps", type=int, default=None,
                   help="override the preset's step count (doom: 0 with --init trains only its grade and sampler)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", default=None, help="continue from this checkpoint (same preset) instead of scratch")
    t.add_argument("--lr", type=float, default=None, help="override the preset's peak learning rate")
    t.add_argument("--budget-min", type=float, default=None,
                   help="doom presets: stop after this many minutes of training (default: the preset's)")
    t.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE",
                   help="doom preset: override a training field of DoomConfig, e.g. own_passes=4 own_weight=2 "
                        "seq_frames=16 (repeatable)")
    t.add_argument("--threads", type=threads_arg, default=None,
                   help="torch CPU threads (default: the cores free when training starts; worldlab.threads)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when present)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="roll out against the environment: PSNR/SSIM, control, prompt switch")
    _toggles(e)
    e.add_argument("--seeds", default=None,
                   help="held-out seeds, comma separated (sprites: default 1,2,3, training uses >= 1000; "
                        "DOOM: default 100000..100009)")
    e.add_argument("--steps", type=int, default=None, help="rollout steps (default: sprites 64, DOOM 300)")
    e.add_argument("--map", default=None, help="DOOM models only: the map (default: the model's, my_way_home)")
    e.add_argument("--prompt", default=None, help="DOOM models only: the prompt picking the style (default normal)")
    e.add_argument("--gallery", default=None, metavar="PATH.png",
                   help="also write a PNG: per seed, truth and model frames at steps 1, 8, 32, 64, 300 (<= --steps)")
    e.set_defaults(func=run_eval)

    b = sub.add_parser("bench", help="headless model timing: step percentiles, switch spike, micro-batching")
    _toggles(b)
    b.add_argument("--steps", type=int, default=300)
    b.add_argument("--batches", default="1,4,8")
    b.set_defaults(func=run_bench)

    m = sub.add_parser("models", help="list the models --model can name (built-in and plug-ins) and their toggles")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run_models)


def _parse_ints(name: str, text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from None
    if not vals:
        raise ValueError(f"--{name} is empty")
    return vals


def _check_out(out) -> None:
    if out is not None:
        from worldlab.experiments.results import check_out_path

        check_out_path(out)


def _toggles_of(args):
    from worldlab.config import Toggles

    return Toggles(args.weights, args.window, args.kv)


def run_train(args) -> int:
    from worldlab.config import preset
    from worldlab.model.registry import resolve_device
    from worldlab.threads import for_training
    from worldlab.train import train

    for_training(args.threads)
    device = resolve_device(args.device)
    if args.preset in ("doom", "doom-tokenizer"):
        return _train_doom(args)
    if args.budget_min is not None or args.set:
        raise ValueError("--budget-min and --set apply to the doom presets")
    if args.preset == "conv":  # a different model family with its own trainer
        from worldlab.train_conv import train_conv

        if args.init or args.lr:
            raise ValueError("--init and --lr apply to the transformer presets, not conv")
        summary = train_conv(args.out, seed=args.seed, steps=args.steps, progress=not args.json, device=device)
        print(json.dumps(summary) if args.json else f"saved {args.out}: {summary}")
        return 0
    summary = train(preset(args.preset), args.out, seed=args.seed, steps=args.steps, progress=not args.json,
                    init=args.init, lr=args.lr, device=device)
    print(json.dumps(summary) if args.json else f"saved {args.out}: {summary}")
    return 0


def _train_doom(args) -> int:
    """The DOOM presets (CPU): the world model over the shipped tokenizer, or the tokenizer itself."""
    from dataclasses import replace

    from worldlab.doom import vizdoom

    vizdoom()  # one line when the game is missing, before anything trains
    if args.preset == "doom-tokenizer":
        import pathlib

        from worldlab.model.doom.train_tokenizer import TrainConfig, train as train_tokenizer

        if args.set:
            raise ValueError("--set applies to the doom preset, not doom-tokenizer")
        given = {"steps": args.steps, "seed": args.seed, "lr": args.lr, "budget_min": args.budget_min}
        summary = train_tokenizer(replace(TrainConfig(), **{k: v for k, v in given.items() if v is not None}),
                                  pathlib.Path(args.out), init=args.init)
    else:
        from worldlab.model.doom.dynamics import DoomConfig
        from worldlab.model.doom.train import parse_overrides, train as train_doom

        given = parse_overrides(args.set) | ({} if args.lr is None else {"lr": args.lr})
        summary = train_doom(args.out, replace(DoomConfig(), **given), seed=args.seed, steps=args.steps,
                             budget_min=args.budget_min, progress=not args.json, init=args.init)
    print(json.dumps(summary) if args.json else f"saved {args.out}: {summary}")
    return 0


def run_eval(args) -> int:
    from worldlab.evaluate import check_request, evaluate_runs
    from worldlab.experiments.measure import eval_dataset
    from worldlab.experiments.provenance import now
    from worldlab.experiments.results import save_dataset
    from worldlab.threads import for_inference

    for_inference(args.threads)
    seeds = _parse_ints("seeds", args.seeds) if args.seeds is not None else None
    # before the model loads: what was given is checked here, the world's defaults once the model says its world
    check_request(seeds or [0], 1 if args.steps is None else args.steps, args.gallery)
    if args.map is not None:
        from worldlab.doom import check_map

        check_map(args.map)
    _check_out(args.out)
    started = now()
    model = build_model(args)
    if getattr(model, "world", None) == "doom":
        return _run_doom_eval(args, model, seeds, started)
    if args.map is not None or args.prompt is not None:
        raise ValueError("--map and --prompt apply to DOOM models only")
    seeds, steps = seeds or [1, 2, 3], 64 if args.steps is None else args.steps
    res, runs = evaluate_runs(model, seeds, steps, gallery_path=args.gallery)
    if args.out:
        ds = eval_dataset(res, runs, _toggles_of(args), model, checkpoint=args.checkpoint, started_at=started)
        save_dataset(ds, args.out)
    if args.json:
        print(json.dumps(res, allow_nan=False))  # pooled PSNRs are capped: never Infinity/NaN
        return 0
    for k, v in res.items():
        if k not in ("psnr_per_step", "gallery", "gallery_steps", "baselines"):
            print(f"{k:18s} {v}")
    for name, b in res["baselines"].items():
        ci = b["psnr_mean_ci"] and "[{:.2f}, {:.2f}]".format(*b["psnr_mean_ci"])
        print(f"baseline {name:9s} psnr_mean {b['psnr_mean']:.2f} {ci}  psnr_tail {b['psnr_tail']:.2f}  "
              f"switch {b['switch_psnr']:.2f}  ssim {b['ssim_mean']:.3f}  sharpness {b['sharpness_ratio']:.2f}  "
              f"agent_err {b['agent_err_px']:.1f} px")
    _print_gallery(res, steps)
    return 0


def _print_gallery(res: dict, steps: int) -> None:
    if res.get("gallery"):
        shown = ", ".join(map(str, res["gallery_steps"]))
        note = f" (--steps {steps} < 300: only these)" if steps < 300 else ""
        print(f"gallery            {res['gallery']}: steps {shown}{note}")


def _run_doom_eval(args, model, seeds, started: str) -> int:
    """`worldlab eval` for a model of the DOOM world (worldlab.doom_eval): the real game is the truth."""
    from worldlab import doom_eval
    from worldlab.experiments.measure import doom_eval_dataset
    from worldlab.experiments.results import save_dataset

    steps = doom_eval.DEFAULT_STEPS if args.steps is None else args.steps
    res = doom_eval.evaluate(model, seeds or doom_eval.DEFAULT_SEEDS, steps,
                             prompt=doom_eval.DEFAULT_PROMPT if args.prompt is None else args.prompt,
                             map=args.map, gallery_path=args.gallery)
    if args.out:
        save_dataset(doom_eval_dataset(res, _toggles_of(args), model, checkpoint=args.checkpoint,
                                       started_at=started), args.out)
    if args.json:
        print(json.dumps(res, allow_nan=False))
        return 0
    print(doom_eval.format_table(res))
    _print_gallery(res, steps)
    return 0


def run_bench(args) -> int:
    from worldlab.bench_model import bench
    from worldlab.experiments.measure import bench_dataset
    from worldlab.experiments.provenance import now
    from worldlab.experiments.results import save_dataset
    from worldlab.threads import for_inference

    for_inference(args.threads)
    _check_out(args.out)
    started = now()
    batches = tuple(_parse_ints("batches", args.batches))
    model = build_model(args)
    res = bench(model, steps=args.steps, batches=batches)
    if args.out:
        save_dataset(bench_dataset(res, _toggles_of(args), args.checkpoint, started_at=started, model=model), args.out)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"model_ms p50 {res['model_ms_p50']:.2f}  p95 {res['model_ms_p95']:.2f}  p99 {res['model_ms_p99']:.2f}"
          f"  ({res['fps']:.0f} fps headless)  switch {res['switch_ms']:.1f} ms")
    for B, fps in res["batch_fps"].items():
        print(f"batch {B}: {fps:.0f} frames/s  ({res['batch_speedup_vs_sequential'][B]:.2f}x vs sequential)")
    return 0


def run_models(args) -> int:
    from worldlab.model.registry import available

    rows = [{"name": p.name, "source": p.source, "supports": {k: list(v) for k, v in p.supports.items()},
             "description": p.description} for p in available()]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        toggles = "  ".join(f"{k}={'|'.join(v)}" for k, v in r["supports"].items())
        print(f"{r['name']:10s} {r['source']:24s} {toggles}\n{'':10s} {r['description']}")
    print("also: --model PATH.safetensors (a tiny checkpoint) or --model module:factory (docs/byom.md)")
    return 0
