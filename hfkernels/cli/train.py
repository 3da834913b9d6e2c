"""``hfkernels train``: train the guidance U-Net on folders of image pairs (or, with no data given,
on a built-in set of generated scenes) and write a run folder.

Examples::

    hfkernels train                                   # tiny preset, generated scenes, runs/default
    hfkernels train --data DATA/MSRS --data DATA/RoadScene \\
        --test DATA/MSRS --test DATA/Harvard --epochs 2 --preset paper \\
        --batch-size 16 --out runs/msrs
    hfkernels train --out runs/msrs --resume --epochs 4   # continue (saved settings reused)
    hfkernels train --data DATA/RoadScene --data DATA/TNO --data DATA/MSRS --test DATA/MSRS \
        --preset small --guide residual --max-size 480 --time-budget 300 --out runs/5min
    torchrun --nproc_per_node=2 -m hfkernels train ...    # DistributedDataParallel
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..training.config import DATA_LR, DEMO_LR, LOSS_WEIGHTS
from . import DEBUG_VAR, CLIError, parse_device


def register(sub):
    p = sub.add_parser(
        "train", help="train the guidance network (no arguments: a quick built-in demo run)",
        description="Train the guidance U-Net. With no --data, trains on generated visible/infrared "
                    "scenes (nothing downloaded). Data folders: DIR/vi + DIR/ir (RoadScene, TNO), "
                    "MSRS (DIR/train|test/vi+ir), Harvard (DIR/{CT,PET,SPECT}-MRI), or 'VIS_DIR,IR_DIR'.",
    )
    add_train_options(p)
    p.add_argument("--out", help="run folder (default runs/default)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run in --out, or write a run into a folder that holds other files")
    p.set_defaults(func=run)


def add_train_options(p) -> None:
    """The options that make a training configuration (shared with ``hfkernels sweep``, whose
    trials start from them)."""
    p.add_argument("--data", action="append", metavar="DIR", help="training folder (repeatable)")
    p.add_argument("--test", action="append", metavar="DIR", help="evaluation folder after each epoch (repeatable)")
    p.add_argument("--epochs", type=int, help="total number of epochs (default 2 with --data, 4 for the demo)")
    p.add_argument("--preset", choices=("tiny", "small", "paper"),
                   help="network size (default tiny: the size of the built-in demo and the quickest; on real data "
                        "on a CPU, small gives better scores per minute, see the README)")
    p.add_argument("--guide", choices=("residual", "scratch", "direct"),
                   help="residual (default): the network starts as the heuristic guidance and learns a correction "
                        "to its logit; scratch: the paper's network, which starts at mu = 0.5; direct: the same "
                        "U-Net outputs the fused luminance itself, no pyramid (Table 8's comparison arm)")
    p.add_argument("--batch-size", type=int, help="images per batch and process (default 8)")
    p.add_argument("--crop", type=int, metavar="SIDE",
                   help="train on random crops of at most SIDE x SIDE, every batch of one size, so a batch holds "
                        "--batch-size images even when the data has many sizes (default 256; 0: whole images, "
                        "batches grouped by size)")
    p.add_argument("--max-size", type=int,
                   help="downscale training images whose longer side exceeds this (aspect kept; default: no "
                        "downscaling); test sets stay at native resolution")
    p.add_argument("--eval-max-size", type=int, help="downscale test images too (default: native resolution)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop after the first optimizer step past this much training time (the steps and the "
                        "BatchNorm re-estimation after each epoch), then evaluate and checkpoint; --epochs still "
                        "caps the run if given. Not counted: the per-epoch evaluation "
                        "of --eval-pairs pairs and the final one of the full test sets (both announced with "
                        "their expected time)")
    p.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--accum", type=int, help="batches per optimizer step (gradient accumulation, default 1)")
    p.add_argument("--seed", type=int, help="seed for the initial weights and the batch order (default 0)")
    p.add_argument("--lr", type=float,
                   help="AdamW learning rate (default with --data: per guide kind, "
                        + ", ".join(f"{g} {v:g}" for g, v in DATA_LR.items()) + f"; {DEMO_LR:g} for the demo)")
    for key, default in LOSS_WEIGHTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=float, metavar="W",
                       help=f"FusionLoss weight {key} (default {default:g}, the released value)")
    p.add_argument("--levels", type=int, help="pyramid levels of the fusion (default 4)")
    p.add_argument("--backend", help="kernel backend for fusion and loss (default: best available)")
    p.add_argument("--metrics", help="comma-separated metric names for the evaluation (default: the suite's)")
    p.add_argument("--eval-limit", type=int, help="evaluate at most this many pairs per test set (default: all)")
    p.add_argument("--eval-pairs", type=int, metavar="N",
                   help="pairs per test set scored after each epoch, spread over the set and the same every epoch "
                        "(named in history.json; default 8; 0: every pair)")
    p.add_argument("--no-final-eval", action="store_true",
                   help="skip scoring the full test sets after the last epoch (the results page then shows the "
                        "per-epoch pairs only)")
    p.add_argument("--sheet-pairs", type=int, help="pairs on each epoch's contact sheet (default 4)")
    p.add_argument("--synthetic-pairs", type=int, help="generated training pairs when no --data (default 48)")
    p.add_argument("--synthetic-size", help="HxW of generated pairs (default 96x128)")
    p.add_argument("--cache", choices=("auto", "yes", "no"),
                   help="keep decoded images as uint8 on the device (default auto: when they fit in a third of "
                        "the free GPU memory, or 2 GiB on a CPU)")
    p.add_argument("--workers", type=int, help="decoding processes when not cached (default 0)")
    p.add_argument("--bn-batches", type=int,
                   help="batches that re-estimate BatchNorm statistics after each epoch (default 16, 0: off)")
    p.add_argument("--no-baseline", action="store_true", help="skip evaluating the heuristic guidance once")
    p.add_argument("--report-limit", type=int, metavar="N",
                   help="pictures for at most N pairs per test set on the results page RUN/report/ (default: all)")
    p.add_argument("--no-report", action="store_true", help="no results page at the end of the run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# CLI option -> TrainConfig field, for options whose value is used as given
_DIRECT = {"epochs": "epochs", "preset": "preset", "guide": "guide", "batch_size": "batch_size",
           "max_size": "max_size", "eval_max_size": "eval_max_size", "time_budget": "time_budget",
           "device": "device", "accum": "accum", "seed": "seed", "lr": "lr", "levels": "levels",
           "backend": "backend", "eval_limit": "eval_limit", "sheet_pairs": "sheet_pairs",
           "synthetic_pairs": "synthetic_pairs", "workers": "num_workers", "bn_batches": "bn_batches"}


def config_from_args(args):
    """``(TrainConfig, resume, overwrite)`` from parsed arguments. With ``--resume`` the settings
    saved in RUN/config.json are the starting point and only options given now change them."""
    from ..guidance.checkpoint import CONFIG_JSON
    from ..io import read_json
    from ..training.config import DEFAULT_OUT, TrainConfig

    out = args.out or DEFAULT_OUT
    cfg = TrainConfig()
    saved = Path(out) / CONFIG_JSON
    if args.resume and saved.is_file():
        cfg = TrainConfig.from_json(read_json(saved).get("train", {}))
    cfg.out = out
    for opt, fld in _DIRECT.items():
        v = getattr(args, opt)
        if v is not None:
            setattr(cfg, fld, v)
    if args.data:
        cfg.data = list(args.data)
    if args.test:
        cfg.test = list(args.test)
    for key in LOSS_WEIGHTS:
        v = getattr(args, key)
        if v is not None:
            if not v >= 0 or v == float("inf"):
                raise CLIError(f"--{key.replace('_', '-')} must be a finite number >= 0, got {v}")
            cfg.loss_weights = {**cfg.loss_weights, key: v}
    if args.metrics:
        from ..metrics import check_names

        try:  # now, not once per test image after the data has loaded
            cfg.metrics = list(check_names(args.metrics))
        except ValueError as e:
            raise CLIError(f"--metrics: {e}") from None
    if args.synthetic_size:
        try:
            h, w = (int(v) for v in args.synthetic_size.lower().split("x"))
        except ValueError:
            raise CLIError(f"--synthetic-size must look like 96x128, got {args.synthetic_size!r}") from None
        if h < 1 or w < 1:
            raise CLIError(f"--synthetic-size must be at least 1x1, got {args.synthetic_size!r}")
        cfg.synthetic_size = (h, w)
    if args.cache:
        cfg.cache = {"auto": "auto", "yes": True, "no": False}[args.cache]
    if args.no_baseline:
        cfg.baseline = False
    if args.report_limit is not None:
        if args.report_limit < 0:
            raise CLIError(f"--report-limit must be >= 0, got {args.report_limit}")
        cfg.report_limit = args.report_limit
    if args.no_report:
        cfg.report = False
    if args.crop is not None:
        if args.crop < 0:
            raise CLIError(f"--crop must be >= 0, got {args.crop}")
        cfg.crop_size = args.crop or None
    if args.eval_pairs is not None:
        if args.eval_pairs < 0:
            raise CLIError(f"--eval-pairs must be >= 0, got {args.eval_pairs}")
        cfg.eval_pairs = args.eval_pairs or None
    if args.no_final_eval:
        cfg.final_eval = False
    # the default run folder is a scratch area: a new default run replaces the old one
    overwrite = args.overwrite or (args.out is None and not args.resume)
    return cfg, args.resume, overwrite


def _foreign(entry: Path) -> bool:
    """Whether a folder entry is none of the trainer's files (dot-files, such as the atomic
    writer's temporaries, count as the trainer's)."""
    from ..guidance.checkpoint import CHECKPOINT_JSON, CONFIG_JSON

    own = {CHECKPOINT_JSON, CONFIG_JSON, "history.json", "baseline.json", "sheets", "report"}
    return not (entry.name in own or entry.name.startswith(".") or entry.suffix == ".safetensors")


def _holds_run(folder: Path) -> bool:
    from ..guidance.checkpoint import CHECKPOINT_JSON, CONFIG_JSON, FORMAT
    from ..io import read_json

    if (folder / CHECKPOINT_JSON).is_file():
        return True
    try:
        return read_json(folder / CONFIG_JSON).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_run_folder(cfg, overwrite: bool) -> None:
    """Refuse a run folder that is, or lies inside, a --data/--test folder, that is a file, or
    that holds files of something other than a training run (unless ``overwrite``). A folder
    holding a run is left to the trainer, which asks for --resume or --overwrite."""
    from ..io import OutputError, check_output_folder

    out = Path(cfg.out)
    inputs = [Path(p) for spec in [*(cfg.data or []), *(cfg.test or [])] for p in str(spec).split(",")]
    check_output_folder("--out", out, inputs)
    if overwrite or not out.is_dir() or _holds_run(out):
        return
    foreign = sorted(p.name for p in out.iterdir() if _foreign(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(f"--out {out} is not a training run folder but holds {shown}; choose a new or empty "
                          "folder, or pass --overwrite to write the run's files into it")


def run(args) -> int:
    from ..io.datasets import DataError
    from ..training.loop import train

    if args.device is not None:
        parse_device(args.device)
    cfg, resume, overwrite = config_from_args(args)
    check_run_folder(cfg, args.overwrite)
    try:
        train(cfg, resume=resume, overwrite=overwrite, progress=not args.no_progress)
    except DataError as e:
        raise CLIError(str(e)) from None
    except KeyboardInterrupt:
        if os.environ.get(DEBUG_VAR, "") not in ("", "0"):
            raise
        # on a line of its own (the progress bar leaves the cursor on its line), saying what is kept
        print(f"\nhfkernels train: interrupted; {kept(cfg.out)}", file=sys.stderr)
        return 130
    return 0


def kept(out) -> str:
    """What an interrupted run leaves in ``out`` and how to go on from it."""
    from ..guidance.checkpoint import CHECKPOINT_JSON
    from ..io import read_json

    try:
        epoch = int(read_json(Path(out) / CHECKPOINT_JSON)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"no epoch finished, so {out} holds no checkpoint yet (start again to train)"
    return (f"{out} keeps the checkpoint of epoch {epoch} (the epoch under way is lost); continue with "
            f"`hfkernels train --out {out} --resume`")
