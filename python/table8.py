#!/usr/bin/env python
"""A Table-8-style comparison: the metric means of five "fusions" on given test folders.

Methods (rows):
- ``visible``    the visible image itself (F = A);
- ``infrared``   the infrared image itself (F = B);
- ``laplacian``  the pyramid fusion with the heuristic guidance ``w``;
- ``heuristic``  the per-pixel heuristic weight map blend ``(1 - w') vis + w' ir``;
- ``trained``    the pyramid fusion with the trained guidance network of ``--checkpoint RUN``
                 (left out without ``--checkpoint``).

Every guided row takes one fusion path (``--path``, see ``hfkernels.evaluation.PATHS``):
``color`` (default) fuses the luma and keeps the visible Cb/Cr (``fuse_color``, the path of
``hfkernels fuse``); ``rgb`` fuses all three RGB channels (the paper's Laplacian baseline).

    python python/table8.py --data $HFK_DATA/MSRS --data $HFK_DATA/Harvard \
        --checkpoint runs/msrs [--metrics EN,MI,VIF,Qabf,SSIM] [--limit 20] [--json table8.json]

Each ``--data`` folder may hold several sets (Harvard: CT-MRI, PET-MRI, SPECT-MRI); every set gets
its own table. Images are evaluated one at a time, at full resolution unless ``--max-size``.

**The paper's Table 8 at an equal training budget** (``--train``): trains the direct U-Net
(``--guide direct``: the network outputs the fused luminance, no pyramid) and the hybrid (residual
and scratch guides) on the ``--train`` folders with the same preset, epochs, image size and batch
(each arm its own ``hfkernels train`` process, whose peak resident memory is read from the kernel;
training seconds from the run's history), then scores the rows Laplacian with ``mu = 0.5``, the
heuristic weight map, direct U-Net, hybrid residual and hybrid scratch on the ``--data`` sets::

    python python/table8.py --train $HFK_DATA/RoadScene --train $HFK_DATA/TNO --train $HFK_DATA/MSRS \
        --data $HFK_DATA/MSRS --runs bench-out/table8 --preset small --epochs 2 --train-max-size 320 \
        --metrics VIF,Qabf,SSIM
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hfkernels import evaluation as E  # noqa: E402
from hfkernels.cli import parse_device, run_guarded  # noqa: E402
from hfkernels.guidance import load_guidance  # noqa: E402
from hfkernels.io.datasets import PairDataset, find_sets  # noqa: E402

DEFAULT_METRICS = "EN,MI,VIF,Qabf,SSIM,SD,SF,AG"
#: (row name, hfkernels.evaluation.method) of the rows before "trained"
ROWS = (("visible", "vis"), ("infrared", "ir"), ("laplacian", "heuristic"), ("heuristic", "blend"))


def methods(checkpoint=None, device="cpu", backend=None, path="color"):
    """name -> f(vis (1,3,H,W), ir (1,1,H,W)) -> fused, all in [0, 1], every guided row on ``path``."""
    out = {name: E.method(spec, backend=backend, path=path) for name, spec in ROWS}
    if checkpoint:
        out["trained"] = E.pyramid(load_guidance(checkpoint, device=device), backend=backend, path=path)
    return out


#: the arms of the training comparison: (row name, guide kind)
ARMS = (("direct U-Net", "direct"), ("hybrid, residual guide", "residual"), ("hybrid, scratch guide", "scratch"))
#: the untrained rows of the training comparison: (row name, hfkernels.evaluation.method)
PARADIGM_ROWS = (("Laplacian, mu = 0.5", "laplacian:0.5"), ("heuristic weight map", "blend"))


def train_arm(guide: str, args, run: Path) -> dict:
    """Train one arm in its own process (unless ``run`` already holds it); returns
    ``{"train_seconds", "peak_rss_mb", "epochs", "images"}`` (kept in ``run/arm.json``)."""
    record = run / "arm.json"
    if record.is_file():
        return json.loads(record.read_text())
    cmd = [sys.executable, "-m", "hfkernels", "train", "--guide", guide, "--preset", args.preset,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
           "--out", str(run), "--overwrite", "--no-baseline", "--no-report", "--sheet-pairs", "0", "--no-progress"]
    for d in args.train:
        cmd += ["--data", d]
    if args.train_max_size:
        cmd += ["--max-size", str(args.train_max_size)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (its peak RSS)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"training the {guide} arm failed (exit {proc.returncode})")
    hist = json.loads((run / "history.json").read_text())
    info = {"guide": guide, "train_seconds": sum(r["seconds"] for r in hist), "epochs": len(hist),
            "images": sum(r["images"] for r in hist), "peak_rss_mb": usage.ru_maxrss / 1024,
            "load": os.getloadavg()}
    record.write_text(json.dumps(info, indent=1) + "\n")
    return info


def paradigms(args, device):
    """``(fns, arms)``: the fusions of the training comparison and each trained arm's figures."""
    fns = {name: E.method(spec, backend=args.backend) for name, spec in PARADIGM_ROWS}
    arms = {}
    for name, guide in ARMS:
        arms[name] = train_arm(guide, args, Path(args.runs) / guide)
        print(f"{name}: {arms[name]['train_seconds']:.0f} s, peak RSS {arms[name]['peak_rss_mb']:.0f} MB", flush=True)
        fns[name] = E.colour_fusion(load_guidance(Path(args.runs) / guide, device=device), backend=args.backend)
    return fns, arms


def compare(dataset, fns, metrics, limit=None, device="cpu"):
    """``({method: {metric: mean}}, pairs)`` over the pairs of ``dataset``."""
    pairs = E.pairs_from_dataset(dataset, limit)
    scores = E.score(pairs, fns, metrics, device=device)
    return {m: E.means(rows) for m, rows in scores.items()}, len(pairs)


def markdown(title, table, n, arms=None):
    cols = list(next(iter(table.values())))
    extra = ["training s", "peak RSS MB"] if arms else []
    lines = [f"### {title} ({n} pairs)", "", "| method | " + " | ".join(cols + extra) + " |",
             "| --- | " + " | ".join("---:" for _ in cols + extra) + " |"]
    for m, vals in table.items():
        cells = [f"{vals[c]:.3f}" for c in cols]
        if arms:
            a = arms.get(m)
            cells += [f"{a['train_seconds']:.0f}", f"{a['peak_rss_mb']:.0f}"] if a else ["–", "–"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, help="test folder (repeatable; test split)")
    p.add_argument("--checkpoint", help="training run folder for the 'trained' row")
    p.add_argument("--metrics", default=DEFAULT_METRICS)
    p.add_argument("--limit", type=int, help="at most this many pairs per set")
    p.add_argument("--max-size", type=int, help="downscale images whose longer side exceeds this")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--backend", default=None)
    p.add_argument("--path", choices=tuple(E.PATHS), default="color", help="fusion path of every guided row")
    p.add_argument("--train", action="append", metavar="DIR",
                   help="train the direct U-Net and the hybrid arms on these folders (repeatable) and compare "
                        "them at an equal budget (see the module docstring)")
    p.add_argument("--runs", default="table8-runs", help="with --train: folder of the arms' runs (reused if there)")
    p.add_argument("--preset", default="small", help="with --train: network preset of every arm (default small)")
    p.add_argument("--epochs", type=int, default=2, help="with --train: epochs of every arm (default 2)")
    p.add_argument("--batch-size", type=int, default=4, help="with --train: batch size (default 4)")
    p.add_argument("--train-max-size", type=int, default=320, help="with --train: training images' longer side")
    p.add_argument("--seed", type=int, default=0, help="with --train: seed of every arm")
    p.add_argument("--json", help="also write the tables as JSON here (strict JSON: NaN as null)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = p.parse_args(argv)
    if args.json:
        from hfkernels.io import check_outputs

        inputs = [*args.data, *([args.checkpoint] if args.checkpoint else [])]
        check_outputs([("--json", args.json)], inputs, overwrite=args.overwrite)
    device = parse_device(args.device)
    arms = None
    if args.train:
        fns, arms = paradigms(args, device)
    else:
        fns = methods(args.checkpoint, device, args.backend, args.path)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    result = {}
    for spec in args.data:
        for s in find_sets(spec, split="test"):
            t0 = time.perf_counter()
            table, n = compare(PairDataset(s, max_size=args.max_size), fns, metrics, args.limit, device)
            result[s.name] = table
            print(markdown(f"{s.name}, path {args.path}", table, n, arms))
            print(f"\n({time.perf_counter() - t0:.1f} s)\n", flush=True)
    if arms:
        result = {"sets": result, "arms": arms}
    if args.json:
        E.dump_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main, "table8.py"))
