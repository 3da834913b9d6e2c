"""The image pairs ``benchmarks/gpu_run.sh`` trains and evaluates on: find them, or pack a subset.

Subcommands (``python benchmarks/gpu_data.py CMD ...``):

* ``pack DEST [--source ROOT] [--budget-mib N]``: copy the sets below from ``ROOT`` (default:
  the package's data root, ``hfkernels.io.data_root``) into ``DEST`` with the same layout, within ``N`` MiB,
  and write ``DEST/MANIFEST.json`` saying what was kept. Sets go in whole, in the order below,
  while they fit; the sets that do not fit share what is left in proportion to their size, each
  keeping evenly spaced pairs (by file name), so a subset spans its set. ``DEST`` inside a git
  checkout must be ignored by git (the images must never be committed). Use it to carry the data
  to a machine that only receives the repository, e.g. the GPU machine of ``gpu_run.sh``.
* ``check ROOT --json FILE``: the sets found under ``ROOT``, their pair counts (and, for a packed
  folder, of how many in the source), as JSON; a missing set is listed as missing.
* ``args ROOT train|eval``: the arguments the run gives ``hfkernels train`` (one ``--data
  VIS,IR`` pair per line) or ``hfkernels eval`` (``NAME VIS IR`` per line) for the sets present.
  Standard library only.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

#: (name, role, first-source folder, second-source folder), relative to the data root, in the
#: order ``pack`` takes them whole. Training: the pairs the trainer sees; evaluation: zero-shot.
SETS = (
    ("MSRS-train", "train", "MSRS/train/vi", "MSRS/train/ir"),
    ("RoadScene", "train", "RoadScene/vi", "RoadScene/ir"),
    ("TNO", "train", "TNO/vi", "TNO/ir"),
    ("MSRS-test", "eval", "MSRS/test/vi", "MSRS/test/ir"),
    ("Harvard-CT-MRI", "eval", "Harvard/CT-MRI/CT", "Harvard/CT-MRI/MRI"),
    ("Harvard-PET-MRI", "eval", "Harvard/PET-MRI/PET", "Harvard/PET-MRI/MRI"),
    ("Harvard-SPECT-MRI", "eval", "Harvard/SPECT-MRI/SPECT", "Harvard/SPECT-MRI/MRI"),
)
#: sets taken whole (while they fit) before the others share the rest of the budget
WHOLE_FIRST = ("MSRS-train", "RoadScene", "TNO", "MSRS-test")
MANIFEST = "MANIFEST.json"
#: the device tool carries at most 64 MiB with the repository; this leaves room for the checkout
DEFAULT_BUDGET_MIB = 56


def present(root: Path, role: str | None = None) -> list[tuple[str, Path, Path]]:
    """``[(name, vis_dir, ir_dir)]`` of the sets (of ``role``, if given) whose two folders exist."""
    return [(n, root / a, root / b) for n, r, a, b in SETS
            if (role is None or r == role) and (root / a).is_dir() and (root / b).is_dir()]


def _pairs(vis: Path, ir: Path):
    from hfkernels.io import match_pairs

    return match_pairs(vis, ir, strict=False)


def check(root: Path) -> dict:
    manifest = {}
    mp = root / MANIFEST
    if mp.is_file():
        manifest = json.loads(mp.read_text()).get("sets", {})
    found = {n: (v, i) for n, v, i in present(root)}
    sets = []
    for name, role, a, b in SETS:
        if name not in found:
            sets.append({"name": name, "role": role, "pairs": 0, "total": None, "note": f"missing ({a}, {b})"})
            continue
        try:
            res = _pairs(*found[name])
        except (ValueError, OSError) as e:  # an empty or unreadable folder
            sets.append({"name": name, "role": role, "pairs": 0, "total": None, "note": f"unusable: {e}"})
            continue
        rec = {"name": name, "role": role, "pairs": len(res.pairs), "total": len(res.pairs), "note": ""}
        if name in manifest:
            rec["total"] = manifest[name].get("total")
            if rec["total"] != rec["pairs"]:
                rec["note"] = f"carried subset: {rec['pairs']} of {rec['total']} pairs"
        unmatched = len(res.only_a) + len(res.only_b)
        if unmatched:
            rec["note"] = (rec["note"] + "; " if rec["note"] else "") + f"{unmatched} file(s) without a partner"
        sets.append(rec)
    return {"root": str(root), "packed": bool(manifest), "sets": sets}


def _evenly(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (first one included)."""
    if k >= n:
        return list(range(n))
    return sorted({int(i * n / k) for i in range(k)})


def _subset(pairs: list, sizes: list[int], quota: int) -> list[int]:
    """The largest evenly spaced subset of ``pairs`` (indices) whose bytes fit ``quota``."""
    k = min(len(pairs), int(len(pairs) * quota / max(sum(sizes), 1)) + 1)
    while k > 0:
        idx = _evenly(len(pairs), k)
        if sum(sizes[i] for i in idx) <= quota:
            return idx
        k -= 1
    return []


def _git_unignored(dest: Path) -> str | None:
    """A reason to refuse ``dest``: inside a git checkout and not ignored by it (else None)."""
    probe = dest if dest.exists() else dest.parent
    while not probe.exists():
        probe = probe.parent
    try:
        top = subprocess.run(["git", "-C", str(probe), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git here: nothing to commit the images to
    if top.returncode != 0:
        return None
    r = subprocess.run(["git", "-C", top.stdout.strip(), "check-ignore", "-q", str(dest.resolve())],
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        return (f"DEST {dest} is inside the git checkout {top.stdout.strip()} and not ignored by git: "
                "choose an ignored folder (e.g. out/gpu-data) or add it to .git/info/exclude")
    return None


def pack(source: Path, dest: Path, budget_mib: float) -> dict:
    if budget_mib <= 0:
        raise ValueError(f"budget_mib must be positive, got {budget_mib}")
    if not source.is_dir():
        raise ValueError(f"source {source} is not a folder")
    why = _git_unignored(dest)
    if why:
        raise ValueError(why)
    if dest.exists():
        if any(dest.iterdir()) and not (dest / MANIFEST).is_file():
            raise ValueError(f"DEST {dest} is not empty and holds no {MANIFEST}: refusing to replace it")
        shutil.rmtree(dest)
    budget = int(budget_mib * 2**20)
    sets = []
    for name, vis, ir in present(source):
        try:
            res = _pairs(vis, ir)
        except (ValueError, OSError) as e:
            print(f"{name}: left out ({e})", file=sys.stderr)
            continue
        sizes = [a.stat().st_size + b.stat().st_size for a, b in res.pairs]
        sets.append({"name": name, "pairs": res.pairs, "sizes": sizes, "bytes": sum(sizes)})
    left = budget
    keep: dict[str, list[int]] = {}
    for s in sets:
        if s["name"] in WHOLE_FIRST and s["bytes"] <= left:
            keep[s["name"]] = list(range(len(s["pairs"])))
            left -= s["bytes"]
    rest = [s for s in sets if s["name"] not in keep]
    rest_bytes = sum(s["bytes"] for s in rest)
    for s in rest:
        quota = left if rest_bytes <= left else int(left * s["bytes"] / rest_bytes)
        keep[s["name"]] = _subset(s["pairs"], s["sizes"], quota)
    manifest = {"source": str(source), "budget_mib": budget_mib, "sets": {}}
    total = 0
    for s in sets:
        idx = keep[s["name"]]
        for i in idx:
            for src in s["pairs"][i]:
                dst = dest / src.relative_to(source)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        nbytes = sum(s["sizes"][i] for i in idx)
        total += nbytes
        manifest["sets"][s["name"]] = {"pairs": len(idx), "total": len(s["pairs"]), "bytes": nbytes}
    manifest["bytes"] = total
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_data.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="copy a subset of the sets into DEST within a size budget")
    p.add_argument("dest")
    p.add_argument("--source", default=None, help="data root (default: the package's, see hfkernels.io.data_root)")
    p.add_argument("--budget-mib", type=float, default=DEFAULT_BUDGET_MIB,
                   help=f"size limit of what is copied (default {DEFAULT_BUDGET_MIB})")
    p = sub.add_parser("check", help="the sets under ROOT and their pair counts")
    p.add_argument("root")
    p.add_argument("--json", required=True, help="write the result here")
    p = sub.add_parser("args", help="arguments for hfkernels train / eval")
    p.add_argument("root")
    p.add_argument("role", choices=("train", "eval"))
    a = ap.parse_args(argv)

    if a.cmd == "pack":
        from hfkernels.io import data_root

        source = Path(a.source) if a.source else data_root()
        if source is None:
            ap.error("no data found: give --source ROOT or set HFK_DATA")
        try:
            m = pack(source, Path(a.dest), a.budget_mib)
        except ValueError as e:
            ap.error(str(e))
        for name, s in m["sets"].items():
            print(f"{name:18} {s['pairs']:4} of {s['total']:4} pairs  {s['bytes'] / 2**20:6.1f} MiB")
        print(f"{'total':18} {m['bytes'] / 2**20:17.1f} MiB (budget {a.budget_mib:g}) in {a.dest}")
    elif a.cmd == "check":
        root = Path(a.root)
        if not root.is_dir():
            ap.error(f"ROOT {root} is not a folder")
        res = check(root)
        Path(a.json).write_text(json.dumps(res, indent=1))
        for s in res["sets"]:
            print(f"{s['name']:18} {s['pairs']:4} pairs  {s['note']}")
    elif a.cmd == "args":
        for name, vis, ir in present(Path(a.root), a.role):
            print(f"{vis},{ir}" if a.role == "train" else f"{name}\t{vis}\t{ir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
