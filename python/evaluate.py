#!/usr/bin/env python
"""Score fused images (or an on-the-fly fusion) on a dataset: a thin wrapper over ``hfkernels eval``.

    python python/evaluate.py --vis DATA/vi --ir DATA/ir --fused OUT --json metrics.json
    python python/evaluate.py --data ../shared/data/TNO --method laplacian --csv tno.csv
    python python/evaluate.py --data ../shared/data/MSRS --checkpoint runs/msrs

See ``hfkernels eval --help`` for every option.
"""
import sys

from hfkernels.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
