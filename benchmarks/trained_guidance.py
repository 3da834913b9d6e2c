"""The "Trained guidance" table: what a few minutes of CPU training buy, zero-shot, at native size.

For each preset x guide kind x wall-clock budget, train the guidance network on RoadScene + TNO +
MSRS-train from the data root (``$HFK_DATA``, else ``shared/data`` beside the checkout; see
:func:`hfkernels.io.data_root`) and evaluate it on MSRS-test and the three Harvard sets at their
native resolution (EN, MI, VIF, Qabf, SSIM; the published protocol). Beside the trained rows:
the heuristic guidance, ``mu = 0.5``, the visible image as the fused image, and the paper's
published rows (:data:`hfkernels.evaluation.report.PAPER_ROWS`).

The budgets of one (preset, guide) are one run trained in stages: the run is trained until its
total training time passes the first budget, evaluated, then resumed until the next budget, and
so on (``--time-budget`` counts training time over resumes; evaluation is not counted). A budget
of 0 evaluates the freshly initialised network (for a residual guide: the heuristic itself).

Writes ``OUT/results.json`` (every figure, with the settings and the machine) after each cell,
``OUT/RESULTS.md`` (the tables) and the weights at each budget (``OUT/snapshots/``). It refuses an
existing ``OUT`` unless ``--resume`` is given, in which case finished cells are skipped and
unfinished runs continue from their checkpoints.

This is a long job, not a test: on a quiet 2-core CPU, 4 x 15 minutes of training for tiny +
small plus 15 evaluations of the 841 test pairs (an estimated 3-5 minutes each), so about 2 to
2.5 hours; ``--eval-limit`` shortens the evaluations, ``--presets ...,paper`` adds the paper
preset (trained at ``--paper-max-size``)::

    python benchmarks/trained_guidance.py --out bench-out/trained            # the full table
    python benchmarks/trained_guidance.py --out /tmp/tg --presets small --guides residual \\
        --budgets 0,90 --train-limit 20 --eval-limit 20                     # a quick sanity run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

TRAIN_SETS = ("RoadScene", "TNO", "MSRS")
#: (row label, folder under the data root, PAPER_ROWS key)
TEST_SETS = (("MSRS-test", "MSRS", "MSRS"), ("CT-MRI", "Harvard/CT-MRI", "CT-MRI"),
             ("PET-MRI", "Harvard/PET-MRI", "PET-MRI"), ("SPECT-MRI", "Harvard/SPECT-MRI", "SPECT-MRI"))
METRICS = ("EN", "MI", "VIF", "Qabf", "SSIM")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the job in --out, skipping finished cells")
    p.add_argument("--data-root", help="data root (default: $HFK_DATA, else shared/data beside the checkout)")
    p.add_argument("--presets", default="tiny,small", help="comma-separated presets (default tiny,small)")
    p.add_argument("--guides", default="scratch,residual", help="comma-separated guide kinds")
    p.add_argument("--budgets", default="60,300,900", help="comma-separated training seconds (default 60,300,900)")
    p.add_argument("--max-size", type=int, default=480, help="training images' longer side (default 480)")
    p.add_argument("--paper-max-size", type=int, default=256,
                   help="training images' longer side for the paper preset (default 256)")
    p.add_argument("--batch-size", type=int, default=4, help="training batch size (default 4)")
    p.add_argument("--lr", type=float, help="learning rate (default: the trainer's for the guide kind, train_config.DATA_LR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, help="at most this many training pairs per set (default: all)")
    p.add_argument("--eval-limit", type=int, help="at most this many pairs per test set (default: all)")
    p.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metrics")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    args.presets = _names(args.presets, "--presets", ("tiny", "small", "paper"))
    args.guides = _names(args.guides, "--guides", ("scratch", "residual"))
    try:
        args.budgets = sorted({float(b) for b in args.budgets.split(",") if b.strip()})
    except ValueError:
        p.error(f"--budgets must be comma-separated numbers of seconds, got {args.budgets!r}")
    if not args.budgets or args.budgets[0] < 0:
        p.error("--budgets must hold numbers >= 0")
    for name in ("train_limit", "eval_limit"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _names(text: str, option: str, allowed) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SystemExit(f"{option} must name some of {', '.join(allowed)}, got {text!r}")
    return names


# --------------------------------------------------------------------------------------- data
def training_specs(root: Path, out: Path, limit: int | None) -> list[str]:
    """Data arguments of the training sets; with ``limit``, folders of links to the first
    ``limit`` pairs of each set (made under ``out/subset``)."""
    from hfkernels.io.datasets import PairDataset

    specs = [str(root / name) for name in TRAIN_SETS]
    if limit is None:
        return specs
    linked = []
    for name, spec in zip(TRAIN_SETS, specs):
        ds = PairDataset(spec, split="train")
        vis_dir, ir_dir = out / "subset" / name / "vi", out / "subset" / name / "ir"
        vis_dir.mkdir(parents=True, exist_ok=True)
        ir_dir.mkdir(parents=True, exist_ok=True)
        for a, b in ds.pairs[:limit]:
            for folder, src in ((vis_dir, a), (ir_dir, b)):
                link = folder / src.name
                if not link.exists():
                    link.symlink_to(src.resolve())
        linked.append(f"{vis_dir},{ir_dir}")
    return linked


class TestSets:
    """The test pairs, decoded once and kept as uint8 (native resolution)."""

    def __init__(self, root: Path, limit: int | None):
        from hfkernels.evaluation import pairs_from_dataset
        from hfkernels.io.datasets import PairDataset

        self.sets = [(label, paper_key, pairs_from_dataset(PairDataset(str(root / folder), split="test"), limit,
                                                           cache=True))
                     for label, folder, paper_key in TEST_SETS]

    def score(self, fusion, names, device) -> dict:
        """``{set: {metric: mean}}`` for ``fusion(vis, ir) -> fused`` (B,3,H,W) in [0, 1]."""
        from hfkernels.evaluation import means, score

        return {label: means(score(pairs, {"f": fusion}, names, "paper", device)["f"])
                for label, _, pairs in self.sets}


# ---------------------------------------------------------------------------------- the job
def load_results(out: Path, args, root: Path) -> dict:
    path = out / "results.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "resume")} | {"data_root": str(root)},
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "torch": torch.__version__, "threads": torch.get_num_threads()},
            "baselines": {}, "cells": {}}


def save(out: Path, results: dict) -> None:
    from hfkernels.io import atomic_write_bytes, atomic_write_json

    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "RESULTS.md", markdown(results).encode())


def cell_key(preset: str, guide: str, budget: float) -> str:
    return f"{preset}/{guide}/{budget:g}"


def train_to(run_dir: Path, preset: str, guide: str, budget: float, args, specs) -> dict:
    """Train (or continue) the run in ``run_dir`` until ``budget`` seconds of training."""
    from hfkernels.io import read_json
    from hfkernels.training.loop import TrainConfig, Trainer

    cfg = TrainConfig(data=list(specs), test=[], preset=preset, guide=guide, batch_size=args.batch_size,
                      max_size=args.paper_max_size if preset == "paper" else args.max_size,
                      device=args.device, seed=args.seed, out=str(run_dir), lr=args.lr,
                      time_budget=budget, baseline=False, report=False, sheet_pairs=0)
    tr = Trainer(cfg, resume=True, progress=False, log=lambda *a, **k: print(*a, **k, flush=True))
    try:
        tr.fit()
    finally:
        tr.close()
    hist = read_json(run_dir / "history.json")
    return {"train_seconds": sum(r["seconds"] for r in hist), "epochs": len(hist),
            "images": sum(r["images"] for r in hist), "last_epoch_batches": hist[-1]["batches"],
            "train_loss": hist[-1]["train_loss"], "first_train_loss": hist[0]["train_loss"]}


def snapshot(run_dir: Path, dest: Path) -> None:
    """Keep the run's weights at this budget (the run folder keeps only its latest checkpoint)."""
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sorted(run_dir.glob("model-e*.safetensors"))[-1], dest)


def run(args) -> int:
    from hfkernels.evaluation import colour_fusion, method
    from hfkernels.guidance import (
        HEURISTIC,
        constant,
        load_guidance,
        model_guidance,
        resolve,
    )
    from hfkernels.guidance.models import GuidanceUNet
    from hfkernels.io import data_root
    from hfkernels.metrics import check_names

    root = Path(args.data_root) if args.data_root else data_root()
    if root is None or not root.is_dir():
        print("no data root: set HFK_DATA or pass --data-root", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not args.resume:
        print(f"{out} exists; pass --resume to continue the job in it, or choose another --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    names = list(check_names(args.metrics))
    results = load_results(out, args, root)
    specs = training_specs(root, out, args.train_limit)
    t0 = time.perf_counter()
    tests = TestSets(root, args.eval_limit)
    print(f"test sets: {', '.join(f'{label} ({len(p)})' for label, _, p in tests.sets)} "
          f"decoded in {time.perf_counter() - t0:.1f} s", flush=True)

    baselines = {"heuristic guidance": colour_fusion(resolve(HEURISTIC)), "mu = 0.5": colour_fusion(constant(0.5)),
                 "visible as fused": method("vis")}
    for label, fusion in baselines.items():
        if label not in results["baselines"]:
            t1 = time.perf_counter()
            results["baselines"][label] = tests.score(fusion, names, args.device)
            print(f"{label}: {_short(results['baselines'][label])} ({time.perf_counter() - t1:.0f} s)", flush=True)
            save(out, results)

    for preset in args.presets:
        for guide in args.guides:
            run_dir = out / "runs" / f"{preset}-{guide}"
            for budget in args.budgets:
                key = cell_key(preset, guide, budget)
                if key in results["cells"]:
                    continue
                t1 = time.perf_counter()
                if budget == 0:
                    torch.manual_seed(args.seed)  # the trainer's initial weights
                    mu_fn = model_guidance(GuidanceUNet(preset=preset, guide=guide))
                    info = {"train_seconds": 0.0, "epochs": 0, "images": 0}
                else:
                    info = train_to(run_dir, preset, guide, budget, args, specs)
                    snapshot(run_dir, out / "snapshots" / f"{preset}-{guide}-{budget:g}s.safetensors")
                    mu_fn = load_guidance(run_dir, device=args.device)
                t2 = time.perf_counter()
                scores = tests.score(colour_fusion(mu_fn), names, args.device)
                results["cells"][key] = {"preset": preset, "guide": guide, "budget": budget, **info,
                                         "eval_seconds": time.perf_counter() - t2,
                                         "wall_seconds": time.perf_counter() - t1, "scores": scores}
                save(out, results)
                print(f"{key}: {info.get('epochs')} epoch(s), {info.get('train_seconds', 0):.0f} s -> {_short(scores)}",
                      flush=True)
    save(out, results)
    print(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}")
    return 0


def _short(scores: dict) -> str:
    return "; ".join(f"{s}: VIF {v.get('VIF', math.nan):.3f} Qabf {v.get('Qabf', math.nan):.3f}"
                     for s, v in scores.items())


# --------------------------------------------------------------------------------- markdown
def markdown(results: dict) -> str:
    from hfkernels.evaluation.report import PAPER_ROWS

    st = results["settings"]
    names = [n for n in METRICS if n in st["metrics"].split(",")] or st["metrics"].split(",")
    train_subset = f" (first {st['train_limit']} pairs of each)" if st.get("train_limit") else ""
    eval_subset = f", first {st['eval_limit']} pairs per set" if st.get("eval_limit") else ""
    machine = results["machine"]
    lines = ["### Trained guidance", "",
             f"Training: RoadScene + TNO + MSRS-train{train_subset}, batch {st['batch_size']}, "
             f"--max-size {st['max_size']} (paper preset {st['paper_max_size']}), seed {st['seed']}, "
             f"on {machine['cores']} CPU core(s), torch {machine['torch']}. Budgets are training seconds "
             "(evaluation not counted). Evaluation: zero-shot, native resolution, published protocol"
             f"{eval_subset}. Bold: at least the heuristic guidance's value.", ""]
    for label, _, paper_key in TEST_SETS:
        base = results["baselines"].get("heuristic guidance", {}).get(label)
        lines += [f"**{label}**", "", "| guidance | trained | " + " | ".join(names) + " |",
                  "| --- | --- | " + " | ".join("---:" for _ in names) + " |"]

        def row(name, trained, vals, bold=False):
            cells = []
            for n in names:
                v = vals.get(n)
                txt = "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
                # compared as printed: a fresh residual guide differs from the heuristic by ~1e-8
                if bold and base and v is not None and n in base and round(v, 3) >= round(base[n], 3):
                    txt = f"**{txt}**"
                cells.append(txt)
            return f"| {name} | {trained} | " + " | ".join(cells) + " |"

        for bl, scores in results["baselines"].items():
            if label in scores:
                lines.append(row(bl, "–", scores[label]))
        for cell in results["cells"].values():
            if label in cell["scores"]:
                trained = (f"{cell['train_seconds']:.0f} s, {cell['epochs']} ep, {cell['images']} img"
                           if cell["budget"] else "untrained")
                lines.append(row(f"{cell['preset']} {cell['guide']}, {cell['budget']:g} s", trained,
                                 cell["scores"][label], bold=True))
        for paper_label, vals in PAPER_ROWS.get(paper_key, []):
            lines.append(row(paper_label, "GPU", vals))
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
