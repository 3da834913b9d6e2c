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
"""
from __future__ import annotations

import argparse
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


def compare(dataset, fns, metrics, limit=None, device="cpu"):
    """``({method: {metric: mean}}, pairs)`` over the pairs of ``dataset``."""
    pairs = E.pairs_from_dataset(dataset, limit)
    scores = E.score(pairs, fns, metrics, device=device)
    return {m: E.means(rows) for m, rows in scores.items()}, len(pairs)


def markdown(title, table, n):
    cols = list(next(iter(table.values())))
    lines = [f"### {title} ({n} pairs)", "", "| method | " + " | ".join(cols) + " |",
             "| --- | " + " | ".join("---:" for _ in cols) + " |"]
    for m, vals in table.items():
        lines.append(f"| {m} | " + " | ".join(f"{vals[c]:.3f}" for c in cols) + " |")
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
    p.add_argument("--json", help="also write the tables as JSON here (strict JSON: NaN as null)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = p.parse_args(argv)
    if args.json:
        from hfkernels.io import check_outputs

        inputs = [*args.data, *([args.checkpoint] if args.checkpoint else [])]
        check_outputs([("--json", args.json)], inputs, overwrite=args.overwrite)
    device = parse_device(args.device)
    fns = methods(args.checkpoint, device, args.backend, args.path)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    result = {}
    for spec in args.data:
        for s in find_sets(spec, split="test"):
            t0 = time.perf_counter()
            table, n = compare(PairDataset(s, max_size=args.max_size), fns, metrics, args.limit, device)
            result[s.name] = table
            print(markdown(f"{s.name}, path {args.path}", table, n))
            print(f"\n({time.perf_counter() - t0:.1f} s)\n", flush=True)
    if args.json:
        E.dump_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main, "table8.py"))
