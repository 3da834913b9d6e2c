"""Package one trained guide as hfkernels' default guidance: a cell of a "Trained guidance" job,
or the validation-chosen epoch of a ``benchmarks/guide_candidate.py`` run (``--candidate``).

Takes the weights a cell of ``benchmarks/trained_guidance.py`` kept (``OUT/snapshots/``), stores
them in half precision with their model configuration inside ``hfkernels/guidance/guides/NAME.safetensors``,
scores the stored (half-precision) weights again on the held-out sets of that job at native
resolution, and writes ``NAME.json`` beside them: the recipe (the job's settings, the cell's
training figures, the machine), the data it was trained and scored on, the scores next to the
heuristic guidance's, and the weights' SHA-256. Existing files are refused unless ``--overwrite``.

With ``--candidate OUT`` the weights are those of the epoch ``OUT/candidate.json`` chose on its
validation split; the record keeps the validation figures of every epoch, and the test sets
(MSRS-test and the three Harvard sets, native resolution) are scored once, for that epoch only.
The heuristic's scores are taken from the record being replaced when it holds them for the same
test sets and metrics (they do not depend on the guide), else computed.

The guide shipped with hfkernels was made by::

    python benchmarks/guide_candidate.py --out bench-out/candidate --preset small --guide residual \\
        --lr 1e-3 --max-size 320 --batch-size 4 --epochs N
    python benchmarks/ship_guide.py --candidate bench-out/candidate --overwrite
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUIDES = HERE.parent / "hfkernels" / "guidance" / "guides"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--job", help="output folder of benchmarks/trained_guidance.py (with --cell)")
    src.add_argument("--candidate", help="output folder of benchmarks/guide_candidate.py")
    p.add_argument("--cell", help="with --job: PRESET/GUIDE/SECONDS, e.g. small/residual/300")
    p.add_argument("--epoch", type=int, help="with --candidate: this epoch instead of the one validation chose")
    p.add_argument("--name", default="default", help="file stem inside --dest (default: default)")
    p.add_argument("--dest", default=str(GUIDES), help=f"folder (default {GUIDES})")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--skip-eval", action="store_true", help="do not re-score the stored weights")
    p.add_argument("--jobs", type=int, default=1,
                   help="with --candidate: score the test sets in this many processes (default 1)")
    return p.parse_args(argv)


def half_weights(path: Path) -> tuple[bytes, dict]:
    """The weights file at ``path`` with every floating tensor in float16 (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in meta:
        raise SystemExit(f"{path}: no model configuration in its metadata")
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    return save(tensors, metadata=meta), json.loads(meta["config"])


def _targets(args, snap: Path, what: str):
    """``(dest, weights file, record file)``, or None after saying why not (weights missing, or
    files there without --overwrite)."""
    if not snap.is_file():
        print(f"no weights kept for {what}: {snap} is missing", file=sys.stderr)
        return None
    dest = Path(args.dest)
    weights, card_path = dest / f"{args.name}.safetensors", dest / f"{args.name}.json"
    taken = [str(p) for p in (weights, card_path) if p.exists()]
    if taken and not args.overwrite:
        print(f"{', '.join(taken)} exist(s); pass --overwrite to replace", file=sys.stderr)
        return None
    return dest, weights, card_path


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    import trained_guidance as tg

    from hfkernels.evaluation import colour_fusion
    from hfkernels.guidance import load_guidance
    from hfkernels.io import atomic_write_bytes, atomic_write_json

    args = parse_args(argv)
    if args.candidate:
        return ship_candidate(args)
    job = Path(args.job)
    results = json.loads((job / "results.json").read_text())
    cell = results["cells"].get(args.cell)
    if cell is None:
        print(f"{job / 'results.json'} has no cell {args.cell!r}; it has {', '.join(results['cells'])}",
              file=sys.stderr)
        return 2
    preset, guide, budget = cell["preset"], cell["guide"], cell["budget"]
    snap = job / "snapshots" / f"{preset}-{guide}-{budget:g}s.safetensors"
    targets = _targets(args, snap, args.cell)
    if targets is None:
        return 2
    dest, weights, card_path = targets
    blob, config = half_weights(snap)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(weights, blob)

    st = results["settings"]
    root = Path(st["data_root"])
    tests = tg.TestSets(root, st.get("eval_limit"))
    card = {
        "name": args.name,
        "model": config,
        "weights": {"file": weights.name, "dtype": "float16", "bytes": len(blob),
                    "sha256": hashlib.sha256(blob).hexdigest()},
        "recipe": {"command": ("python benchmarks/trained_guidance.py --presets "
                               f"{preset} --guides {guide} --budgets ... ; then "
                               f"python benchmarks/ship_guide.py --cell {args.cell}"),
                   "settings": {k: v for k, v in st.items() if k != "data_root"},
                   "train_seconds": cell["train_seconds"], "epochs": cell["epochs"], "images": cell["images"],
                   "machine": results["machine"]},
        "data": {"train": {name: "train split" if name == "MSRS" else "every pair" for name in tg.TRAIN_SETS},
                 "held_out": {label: f"{len(pairs)} pairs" for label, _, pairs in tests.sets}},
        "scores": {"job (float32 weights)": cell["scores"],
                   "heuristic guidance": results["baselines"].get("heuristic guidance")},
    }
    if not args.skip_eval:
        t0 = time.perf_counter()
        mu_fn = load_guidance(weights)
        names = st["metrics"].split(",")
        card["scores"]["shipped (float16 weights)"] = tests.score(colour_fusion(mu_fn), names, "cpu")
        print(f"scored the stored weights in {time.perf_counter() - t0:.0f} s")
    atomic_write_json(card_path, card)
    print(f"wrote {weights} ({len(blob) / 1e6:.2f} MB) and {card_path}")
    return 0


def _score_part(root: str, label: str, folder: str, part: int, parts: int, weights: str, names: list):
    """``(label, {pair: {metric: v}})`` for every ``parts``-th pair of one test set from ``part``
    (in a worker process of :func:`score_sets`)."""
    sys.path.insert(0, str(HERE))
    from hfkernels.evaluation import colour_fusion, pairs_from_dataset, score
    from hfkernels.io import PairDataset
    from hfkernels.guidance import load_guidance

    from hfkernels.guidance import HEURISTIC, resolve

    pairs = pairs_from_dataset(PairDataset(str(Path(root) / folder), split="test"), None)[part::parts]
    mu_fn = resolve(HEURISTIC) if weights == HEURISTIC else load_guidance(weights)
    return label, score(pairs, {"f": colour_fusion(mu_fn)}, names, "paper", "cpu")["f"]


def score_sets(root: Path, weights, names: list, jobs: int) -> dict:
    """``{set: {metric: mean}}`` of the guide in ``weights`` (a file, or "heuristic") on the held-out sets of
    ``trained_guidance.TEST_SETS`` (native resolution, published protocol), in ``jobs`` processes
    (each set cut into ``jobs`` interleaved parts; the means are over every pair of a set)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import trained_guidance as tg
    from hfkernels.evaluation import means

    parts = max(1, jobs)
    work = [(str(root), label, folder, k, parts, str(weights), names)
            for label, folder, _ in tg.TEST_SETS for k in range(parts)]
    rows: dict = {label: {} for label, _, _ in tg.TEST_SETS}
    if jobs <= 1:
        results = [_score_part(*w) for w in work]
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_score_part, *zip(*work)))
    for label, part_rows in results:
        rows[label].update(part_rows)
    return {label: means(r) for label, r in rows.items()}


def ship_candidate(args) -> int:
    """Package the validation-chosen epoch of a guide_candidate.py run (see the module docstring)."""
    sys.path.insert(0, str(HERE))
    import trained_guidance as tg
    from hfkernels.io import atomic_write_bytes, atomic_write_json

    out = Path(args.candidate)
    cand = json.loads((out / "candidate.json").read_text())
    epoch = args.epoch or cand["chosen_epoch"]
    snap = out / "snapshots" / f"epoch_{epoch:04d}.safetensors"
    targets = _targets(args, snap, f"epoch {epoch}")
    if targets is None:
        return 2
    dest, weights, card_path = targets
    old = json.loads(card_path.read_text()) if card_path.is_file() else {}
    blob, config = half_weights(snap)
    st = cand["settings"]
    root = Path(st["data_root"])
    from hfkernels.io import PairDataset

    held_out = {label: f"{len(PairDataset(str(root / folder), split='test'))} pairs"
                for label, folder, _ in tg.TEST_SETS}
    names = list(tg.METRICS)
    epochs = {int(e): r for e, r in cand["epochs"].items() if int(e) <= epoch}
    card = {
        "name": args.name,
        "model": config,
        "weights": {"file": weights.name, "dtype": "float16", "bytes": len(blob),
                    "sha256": hashlib.sha256(blob).hexdigest()},
        "recipe": {"command": (f"python benchmarks/guide_candidate.py --preset {st['preset']} --guide {st['guide']} "
                               f"--lr {st['lr']:g} --max-size {st['max_size']} --batch-size {st['batch_size']} "
                               f"--epochs {st['epochs']} --seed {st['seed']} --crop {st.get('crop', 0)}; then "
                               "python benchmarks/ship_guide.py --candidate OUT"),
                   "settings": {k: v for k, v in st.items() if k != "data_root"},
                   "chosen_epoch": epoch, "chosen_on": "validation split, (VIF + 1.5 Qabf + SSIM) / 3",
                   "train_seconds": sum(r["train_seconds"] for r in epochs.values()), "epochs": epoch,
                   "images": sum(r["images"] for r in epochs.values()),
                   "machine": cand["machine"] | {"load_per_epoch": [epochs[e]["load"] for e in sorted(epochs)]}},
        "data": {"train": {name: "train split" if name == "MSRS" else "every pair but the validation split"
                           for name in tg.TRAIN_SETS},
                 "validation": cand["split"], "held_out": held_out},
        "validation": {"per_epoch": {e: {"score": r["score"], **r["pooled"]} for e, r in sorted(epochs.items())},
                       "heuristic guidance": cand.get("heuristic_val")},
        "scores": {},
    }
    t0 = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    # the stored (float16) weights are what is scored; they replace the old file only afterwards
    tmp_weights = dest / f".{args.name}.candidate.safetensors"
    atomic_write_bytes(tmp_weights, blob)
    try:
        if not args.skip_eval:
            card["scores"]["shipped (float16 weights)"] = score_sets(root, tmp_weights, names, args.jobs)
    except BaseException:
        tmp_weights.unlink(missing_ok=True)
        raise
    print(f"scored the stored weights in {time.perf_counter() - t0:.0f} s")
    heur = old.get("scores", {}).get("heuristic guidance")
    if args.skip_eval:
        pass
    elif heur and set(heur) == set(held_out) and old.get("data", {}).get("held_out") == held_out \
            and all(set(v) >= set(names) for v in heur.values()):
        card["scores"]["heuristic guidance"] = heur
        card["recipe"]["heuristic_scores_from"] = "the record this one replaced (same sets and metrics)"
    else:
        card["scores"]["heuristic guidance"] = score_sets(root, "heuristic", names, args.jobs)
    card["recipe"]["scoring"] = {"load": os.getloadavg(), "seconds": time.perf_counter() - t0}
    os.replace(tmp_weights, weights)
    atomic_write_json(card_path, card)
    print(f"wrote {weights} ({len(blob) / 1e6:.2f} MB) and {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
