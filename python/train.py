#!/usr/bin/env python
"""Train the guidance U-Net: a thin wrapper over ``hfkernels train`` (same options).

    python python/train.py                                   # built-in demo: generated scenes
    python python/train.py --data ../shared/data/MSRS --data ../shared/data/RoadScene \
        --test ../shared/data/MSRS --test ../shared/data/Harvard --preset paper \
        --epochs 2 --batch-size 16 --out runs/msrs
    torchrun --nproc_per_node=4 python/train.py --data ... --out runs/ddp   # one process per GPU

See ``python/fetch_datasets.py`` for getting the public data sets.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout too

from hfkernels.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
