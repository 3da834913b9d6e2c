"""A fixed, seeded, recorded validation split of training data (what searches choose on).

:func:`validation_split` takes the training data arguments (see :mod:`hfkernels.io.datasets`), holds out
a seeded fraction of the pairs of every set with at least ``min_pairs`` pairs (smaller sets, such
as the 11 MSRS training pairs here, stay whole in training) and writes two folders of links into
``folder``::

    folder/train/<set>/{vi,ir}/   the pairs that train
    folder/val/<set>/{vi,ir}/     the pairs that validate
    folder/split.json             the settings and every file name on each side

The trainer reads the link folders like any ``VIS_DIR,IR_DIR`` data argument, so the split needs
nothing from it. The same data, fraction and seed give the same split on any machine (the file
names are sorted before the seeded permutation). Test sets are never part of it: choices made on
it stay blind to them.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ..io import DataError, PairDataset, find_sets

SPLIT_JSON = "split.json"
#: held-out share of each set, permutation seed, smallest set that gives up pairs
DEFAULTS = {"fraction": 0.1, "seed": 0, "min_pairs": 20}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "set"


def validation_split(data, folder, fraction: float = DEFAULTS["fraction"], seed: int = DEFAULTS["seed"],
                     min_pairs: int = DEFAULTS["min_pairs"]) -> dict:
    """Split the pairs of the data arguments ``data`` (list) into training and validation link
    folders under ``folder``; returns the record written to ``folder/split.json``:
    ``{"settings", "train": [spec, ...], "val": [spec, ...], "sets": {name: {"train": [file], "val": [file]}}}``
    where each spec is a ``VIS_DIR,IR_DIR`` data argument. An existing split with the same
    settings is reused as it is; one with other settings raises ``ValueError``."""
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    if isinstance(min_pairs, bool) or not isinstance(min_pairs, int) or min_pairs < 2:
        raise ValueError(f"min_pairs must be an int >= 2, got {min_pairs!r}")
    if not data:
        raise ValueError("data must name at least one training folder")
    folder = Path(folder)
    settings = {"data": [str(d) for d in data], "fraction": float(fraction), "seed": int(seed),
                "min_pairs": min_pairs}
    record_path = folder / SPLIT_JSON
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["settings"] != settings:
            raise ValueError(f"{record_path} holds a split made with {record['settings']}, not {settings}")
        return record
    record = {"settings": settings, "train": [], "val": [], "sets": {}}
    for spec in data:
        for s in find_sets(spec, "train"):
            pairs = sorted(PairDataset(s).pairs, key=lambda p: p[0].name)
            order = list(range(len(pairs)))
            random.Random(f"{seed}/{s.name}").shuffle(order)
            n_val = max(1, round(fraction * len(pairs))) if len(pairs) >= min_pairs else 0
            val = set(order[:n_val])
            name = _safe(s.name)
            if name in record["sets"]:
                raise DataError(f"two training sets are both named {s.name!r}")
            record["sets"][name] = {"train": [], "val": []}
            for side in ("train", "val"):
                chosen = [p for i, p in enumerate(pairs) if (i in val) == (side == "val")]
                if not chosen:
                    continue
                vis_dir, ir_dir = folder / side / name / "vi", folder / side / name / "ir"
                vis_dir.mkdir(parents=True, exist_ok=True)
                ir_dir.mkdir(parents=True, exist_ok=True)
                for a, b in chosen:
                    for d, src in ((vis_dir, a), (ir_dir, b)):
                        link = d / src.name
                        if not link.is_symlink():
                            link.symlink_to(src.resolve())
                record["sets"][name][side] = [a.name for a, _ in chosen]
                record[side].append(f"{vis_dir},{ir_dir}")
    if not record["val"]:
        raise DataError(f"no set in {', '.join(map(str, data))} has {min_pairs} pairs or more to hold some out")
    folder.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


__all__ = ["validation_split", "SPLIT_JSON", "DEFAULTS"]
