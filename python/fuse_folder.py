#!/usr/bin/env python
"""Fuse two folders of image pairs (matched by file name): a wrapper over ``hfkernels fuse``.

    python python/fuse_folder.py --checkpoint runs/default --vis VIS_DIR --ir IR_DIR --out fused/ [--save-mu]
    python python/fuse_folder.py --vis VIS_DIR --ir IR_DIR --out fused/            # the shipped trained guide
    python python/fuse_folder.py --vis VIS_DIR --ir IR_DIR --out fused/ --mu heuristic   # the hand-made map
    python python/fuse_folder.py --data $HFK_DATA/MSRS --checkpoint RUN --out fused/

``--data DIR`` takes any folder layout that training accepts (``DIR/vi`` + ``DIR/ir``, MSRS's
``test`` split, a Harvard ``X-MRI`` folder) and fills in ``--vis``/``--ir``; a folder with several
sets (e.g. ``Harvard``) writes one sub-folder of ``--out`` per set. Colour is kept (the visible
image's Cb/Cr), outputs are PNG; ``--save-mu`` maps go to ``OUT/mu/``. Outputs inside an input
folder are refused, and existing files are replaced only with ``--overwrite``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hfkernels.cli import main, run_guarded  # noqa: E402


def expand(argv):
    """Replace ``--data DIR`` by one ``--vis/--ir/--out`` job per pair set found in DIR."""
    if "--data" not in argv:
        return [argv]
    from hfkernels.io.datasets import find_sets

    i = argv.index("--data")
    rest = argv[:i] + argv[i + 2:]
    sets = find_sets(argv[i + 1], split="test")
    if "--out" not in rest:
        raise SystemExit("fuse_folder.py: --out is required")
    j = rest.index("--out")
    out = Path(rest[j + 1])
    base = rest[:j] + rest[j + 2:]
    jobs = []
    for s in sets:
        dst = out if len(sets) == 1 else out / s.name.replace("/", "_")
        jobs.append([*base, "--vis", str(s.vis_dir), "--ir", str(s.ir_dir), "--out", str(dst)])
    return jobs


def run(argv) -> int:
    if "-h" in argv or "--help" in argv:
        # this script's own usage first: --data is its option, not hfkernels fuse's
        print(__doc__.strip())
        print("\nEvery other option is passed to `hfkernels fuse` (with --data, --vis/--ir are filled in):\n")
        try:
            main(["fuse", "--help"])
        except SystemExit:  # argparse ends --help with exit status 0
            pass
        return 0
    rc = 0
    for job in expand(argv):
        rc = rc or main(["fuse", *job])
    return rc


if __name__ == "__main__":
    sys.exit(run_guarded(lambda: run(sys.argv[1:]), "fuse_folder.py"))
