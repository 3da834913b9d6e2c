"""Train a candidate for the shipped guide, keeping its weights after every epoch and choosing the
epoch on the validation split (never on a test set).

The training data (RoadScene + TNO + MSRS-train from the data root) is split by
:func:`hfkernels.training.split.validation_split` (seeded, recorded in ``OUT/split/split.json``); the run
trains on the training side and scores the validation side after every epoch with VIF, Qabf and
SSIM at native resolution. ``OUT/snapshots/epoch_NNNN.safetensors`` keeps each epoch's weights and
``OUT/candidate.json`` the per-epoch validation scores, the search score
``(VIF + 1.5 Qabf + SSIM) / 3`` and the chosen epoch. ``benchmarks/ship_guide.py --candidate OUT``
packages the chosen weights and scores them on the test sets.

Example (the shipped guide)::

    python benchmarks/guide_candidate.py --out bench-out/candidate --preset small --guide residual \\
        --lr 1e-3 --max-size 320 --batch-size 4 --epochs 12
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

TRAIN_SETS = ("RoadScene", "TNO", "MSRS")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (continued if it holds a run)")
    p.add_argument("--data-root", help="data root (default: $HFK_DATA, else shared/data beside the checkout)")
    p.add_argument("--preset", default="small")
    p.add_argument("--guide", default="residual")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop", type=int, default=0,
                   help="train on random crops of this side (default 0: whole images, as the shipped guide was)")
    p.add_argument("--loss-weights", default="{}", help="JSON object of FusionLoss weights (default: released)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from hfkernels.io import data_root
    from hfkernels.training.config import TrainConfig
    from hfkernels.training.loop import Trainer
    from hfkernels.training.split import validation_split
    from hfkernels.training.sweep import VAL_METRICS, pooled, search_score

    args = parse_args(argv)
    root = Path(args.data_root) if args.data_root else data_root()
    if root is None or not root.is_dir():
        print("no data root: set HFK_DATA or pass --data-root", file=sys.stderr)
        return 2
    out = Path(args.out)
    split = validation_split([str(root / n) for n in TRAIN_SETS], out / "split")
    record_path = out / "candidate.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"data_root": str(root)},
        "split": {k: v for k, v in split["settings"].items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_at_start": os.getloadavg()},
        "epochs": {}}
    snaps = out / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"

    def on_epoch(epoch, rec):
        shutil.copyfile(sorted(run_dir.glob("model-e*.safetensors"))[-1], snaps / f"epoch_{epoch:04d}.safetensors")
        val = rec["eval"]
        sizes = {name: len(files["val"]) for name, files in split["sets"].items() if files["val"]}
        pool = pooled(val, sizes)
        record["epochs"][str(epoch)] = {"val": val, "pooled": pool, "score": search_score(pool),
                                        "train_seconds": rec["seconds"], "train_loss": rec["train_loss"],
                                        "images": rec["images"], "load": os.getloadavg()}
        best = max(record["epochs"], key=lambda e: record["epochs"][e]["score"])
        record["chosen_epoch"] = int(best)
        record["train_seconds_total"] = sum(r["train_seconds"] for r in record["epochs"].values())
        record_path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"epoch {epoch}: validation score {search_score(pool):.4f} "
              f"(VIF {pool['VIF']:.3f} Qabf {pool['Qabf']:.3f} SSIM {pool['SSIM']:.3f}); best epoch {best}",
              flush=True)

    cfg = TrainConfig(data=split["train"], test=split["val"], preset=args.preset, guide=args.guide,
                      batch_size=args.batch_size, max_size=args.max_size, lr=args.lr, epochs=args.epochs,
                      seed=args.seed, out=str(run_dir), device="cpu", metrics=list(VAL_METRICS),
                      loss_weights=json.loads(args.loss_weights), sheet_pairs=0, report=False, baseline=True,
                      eval_pairs=None, final_eval=False, crop_size=args.crop or None)
    t0 = time.perf_counter()
    tr = Trainer(cfg, resume=True, progress=False, on_epoch=on_epoch)
    try:
        tr.fit()
    finally:
        tr.close()
    base = run_dir / "baseline.json"
    if base.is_file():
        record["heuristic_val"] = json.loads(base.read_text())["heuristic"]
    record["wall_seconds_last_call"] = time.perf_counter() - t0
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"chosen epoch {record.get('chosen_epoch')} ({record_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
