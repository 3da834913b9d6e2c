"""``hfkernels sweep``: search training settings with Optuna, each trial one training run scored
on a validation split of the training data (see :mod:`hfkernels.training.sweep`).

Examples::

    hfkernels sweep --out sweeps/paper --grid paper --data DATA/RoadScene --data DATA/TNO \\
        --data DATA/MSRS --preset small --epochs 2 --max-size 320
    hfkernels sweep --out sweeps/lr --space space.yaml --trials 40 --data ...   # TPE sampler
    # many machines on one study (run the same line on every node):
    hfkernels sweep --out sweeps/node-$HOSTNAME --space space.yaml --trials 200 \\
        --storage postgresql://user@db/hfk --study lr-search --data ...
"""
from __future__ import annotations

from . import CLIError


def register(sub):
    from .train import add_train_options

    p = sub.add_parser(
        "sweep", help="search training settings (loss weights, lr, sizes, ...) with Optuna",
        description="Search training settings with Optuna. Each trial trains with the train options given "
                    "here, changed by the trial's values, and is scored (VIF + 1.5 Qabf + SSIM) / 3 on a "
                    "seeded validation split of --data (generated scenes without --data). Test sets are "
                    "never seen: score the chosen configuration afterwards with `hfkernels eval`.",
    )
    p.add_argument("--out", required=True, help="sweep folder: trial runs, trials.csv/json, best.json, heatmap.png")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--space", metavar="FILE",
                      help="YAML or JSON mapping axis -> value | [values] | {low, high, log, step}")
    what.add_argument("--grid", choices=("paper",),
                      help="paper: the released 240-point loss-weight grid (max x grad x ssim x consist)")
    p.add_argument("--trials", type=int,
                   help="finished trials the study should hold (needed with a sampler; default with a grid: all points)")
    p.add_argument("--sampler", choices=("tpe", "random", "grid"),
                   help="default: grid for --grid and for a space of lists only, else tpe")
    p.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="stop trials whose per-epoch validation score is below the median (default median)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage shared by many workers: sqlite:///F, postgresql://..., mysql://..., "
                        "or journal:PATH (a journal file on a shared disk); default sqlite in --out")
    p.add_argument("--study", default="sweep", help="study name in the storage (default sweep)")
    p.add_argument("--heatmap", metavar="X,Y", help="the heat map's two axes (default: the first two varying axes)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of each training set (default 0.1)")
    p.add_argument("--val-seed", type=int, default=0, help="seed of the validation split (default 0)")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of the sampler (default 0)")
    p.add_argument("--heartbeat", type=float, default=30.0, metavar="SECONDS",
                   help="RDB storages: a trial whose process is silent for twice this is failed and retried (default 30)")
    add_train_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import argparse

    from ..io import DataError
    from ..training.sweep import PAPER_GRID, Sweep, is_grid, load_space
    from .train import config_from_args

    if args.test:
        raise CLIError("--test: a search validates on a split of --data and never sees test sets; "
                       "score the best configuration afterwards")
    if args.trials is not None and args.trials < 1:
        raise CLIError(f"--trials must be >= 1, got {args.trials}")
    try:
        space = dict(PAPER_GRID) if args.grid else load_space(args.space)
    except (OSError, ValueError) as e:
        raise CLIError(str(e)) from None
    sampler = args.sampler or ("grid" if is_grid(space) else "tpe")
    if sampler != "grid" and args.trials is None:
        raise CLIError(f"--trials N is needed with the {sampler} sampler")
    heat = [a.strip() for a in args.heatmap.split(",")] if args.heatmap else None
    if heat is not None and len(heat) != 2:
        raise CLIError(f"--heatmap must name two axes, got {args.heatmap!r}")
    targs = argparse.Namespace(**{**vars(args), "out": str(args.out), "resume": False, "overwrite": True})
    base, _, _ = config_from_args(targs)
    try:
        sweep = Sweep(base, space, args.out, storage=args.storage, study=args.study, sampler=sampler,
                      pruner=args.pruner, seed=args.sampler_seed, heatmap=heat, val_fraction=args.val_fraction,
                      val_seed=args.val_seed, heartbeat=args.heartbeat, progress=not args.no_progress,
                      log=lambda *a: print(*a, flush=True))
        c = sweep.run(args.trials)
    except (ValueError, DataError) as e:
        raise CLIError(str(e)) from None
    best = sweep.best()
    print(f"trials: done {c['complete']}, pruned {c['pruned']}, failed {c['fail']}, running elsewhere {c['running']}")
    if best:
        print(f"best: trial {best['trial']} score {best['score']:.4f} {best['params']}\n  {best['command']}")
    print(f"outputs: {args.out}/trials.csv, trials.json, best.json, heatmap.png")
    return 0
