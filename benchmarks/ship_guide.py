"""Package one trained guide from a "Trained guidance" job as hfkernels' default guidance.

Takes the weights a cell of ``benchmarks/trained_guidance.py`` kept (``OUT/snapshots/``), stores
them in half precision with their model configuration inside ``hfkernels/guidance/guides/NAME.safetensors``,
scores the stored (half-precision) weights again on the held-out sets of that job at native
resolution, and writes ``NAME.json`` beside them: the recipe (the job's settings, the cell's
training figures, the machine), the data it was trained and scored on, the scores next to the
heuristic guidance's, and the weights' SHA-256. Existing files are refused unless ``--overwrite``.

The guide shipped with hfkernels was made by::

    python benchmarks/trained_guidance.py --out bench-out/trained --presets small \\
        --guides residual,scratch --budgets 60,300,900
    python benchmarks/ship_guide.py --job bench-out/trained --cell small/residual/300
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUIDES = HERE.parent / "hfkernels" / "guidance" / "guides"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", required=True, help="output folder of benchmarks/trained_guidance.py")
    p.add_argument("--cell", required=True, help="PRESET/GUIDE/SECONDS, e.g. small/residual/300")
    p.add_argument("--name", default="default", help="file stem inside --dest (default: default)")
    p.add_argument("--dest", default=str(GUIDES), help=f"folder (default {GUIDES})")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--skip-eval", action="store_true", help="do not re-score the stored weights")
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


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    import trained_guidance as tg

    from hfkernels.evaluation import colour_fusion
    from hfkernels.guidance import load_guidance
    from hfkernels.io import atomic_write_bytes, atomic_write_json

    args = parse_args(argv)
    job = Path(args.job)
    results = json.loads((job / "results.json").read_text())
    cell = results["cells"].get(args.cell)
    if cell is None:
        print(f"{job / 'results.json'} has no cell {args.cell!r}; it has {', '.join(results['cells'])}",
              file=sys.stderr)
        return 2
    preset, guide, budget = cell["preset"], cell["guide"], cell["budget"]
    snap = job / "snapshots" / f"{preset}-{guide}-{budget:g}s.safetensors"
    if not snap.is_file():
        print(f"no weights kept for {args.cell}: {snap} is missing", file=sys.stderr)
        return 2
    dest = Path(args.dest)
    weights, card_path = dest / f"{args.name}.safetensors", dest / f"{args.name}.json"
    taken = [str(p) for p in (weights, card_path) if p.exists()]
    if taken and not args.overwrite:
        print(f"{', '.join(taken)} exist(s); pass --overwrite to replace", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
