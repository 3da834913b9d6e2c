#!/usr/bin/env python
"""Print the paper's baseline rows (visible as fused, infrared as fused, Laplacian with the
heuristic guidance, the heuristic per-pixel blend, Laplacian with mu = 0.5) for a dataset, under
the published metric protocol — to check a dataset copy and the metrics against published tables.

    python python/baselines.py ../shared/data/TNO
    python python/baselines.py ../shared/data/MSRS --metrics EN,MI,VIF,Qabf,SSIM,SD,SF,AG --json b.json
    python python/baselines.py --vis DATA/vi --ir DATA/ir --protocol standard

A first argument without a leading dash is a dataset folder holding vi/ and ir/ (or test/vi, test/ir).
Everything else is passed to ``hfkernels eval --baselines``.
"""
import sys

from hfkernels.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-"):
        argv = ["--data", argv[0], *argv[1:]]
    sys.exit(main(["eval", "--baselines", *argv]))
