"""``hfkernels bench RESULT.json [--plot out.png]``: summarise a pytest-benchmark run.

``RESULT.json`` is what ``pytest benchmarks/ --benchmark-json=RESULT.json`` writes. The summary has
one row per benchmark, grouped as in pytest-benchmark's own output, with what the suites put in
each benchmark's ``extra_info``: peak memory, the speed targets (met or missed), headline figures
(images/s, bandwidth...) and the paper's figure where one exists. ``--plot`` draws the median
times as a PNG bar chart (needs matplotlib, checked before anything else is done).

The ratio column is always the reference's median divided by the row's median, so it agrees with
the median column: the reference is the row of the same group and shape whose backend the suite
names (``ratio_reference``, usually ``torch``), or, where the reference has no row of its own,
the reference's median timed by the suite in the same process (``ratio_reference_ms``). The
targets are checked on the suite's paired ratio (reference and own call alternating, robust to
load bursts), shown in the target column beside the target.

It lives in the package, not in ``benchmarks/``, because ``hfkernels bench`` is a command of the
installed CLI (``benchmarks/`` is not installed) and it reads only the JSON files, never the suites.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from . import CLIError

#: extra_info keys shown in the "figures" column, with their printed labels
FIGURES = (
    ("images_per_s", "img/s"),
    ("ms_per_image", "ms/img"),
    ("epoch_s", "s/epoch"),
    ("bandwidth_GBps", "GB/s"),
    ("bandwidth_fraction", "of DRAM"),
    ("ratio_vs_opencv", "x vs opencv"),
    ("ratio_vs_msssim", "x vs pytorch-msssim"),
)


def register(sub):
    p = sub.add_parser(
        "bench",
        help="summarise a pytest-benchmark JSON (pytest benchmarks/ --benchmark-json=FILE)",
        description="Print a summary table of a `pytest benchmarks/ --benchmark-json=FILE` run: "
        "median time, ratio to the reference, peak memory, targets and the paper's figures.",
    )
    p.add_argument("result", metavar="RESULT.json", help="the file written by --benchmark-json")
    p.add_argument("--plot", metavar="OUT.png", help="also write a bar chart of the median times (needs matplotlib)")
    p.add_argument("--format", choices=("text", "markdown"), default="text", help="table style (default: text)")
    p.add_argument("--group", metavar="TEXT", help="only benchmarks whose group contains TEXT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# Reading


def load(path) -> dict:
    """Read and sanity-check a pytest-benchmark JSON file; raises CLIError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"RESULT.json: no such file: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CLIError(f"RESULT.json: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise CLIError(
            f"RESULT.json: {path} is not a pytest-benchmark result (no 'benchmarks' list); "
            "write one with `pytest benchmarks/ --benchmark-json=FILE`"
        )
    for i, b in enumerate(data["benchmarks"]):
        if not isinstance(b, dict) or not isinstance(b.get("stats"), dict) or "median" not in b["stats"]:
            raise CLIError(f"RESULT.json: benchmark #{i} in {path} has no stats.median")
    return data


def rows(data: dict, group: str | None = None) -> list[dict]:
    """One flat dict per benchmark: group, name, median_ms, ratio, mem, targets, figures, paper."""
    out = []
    for b in data["benchmarks"]:
        g = b.get("group") or "(no group)"
        if group and group not in g:
            continue
        ex = b.get("extra_info") or {}
        name = ex.get("label") or ex.get("backend") or b.get("param") or b.get("name", "?")
        if ex.get("preset"):
            name = f"{name} {ex['preset']}"
        median_ms = ex.get("median_ms", b["stats"]["median"] * 1e3)
        figures = []
        for key, label in FIGURES:
            v = ex.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                figures.append(f"{_num(v)} {label}")
        out.append(
            {
                "group": g,
                "name": str(name),
                "key": str(ex.get("backend") or ex.get("label") or b.get("param") or b.get("name", "?")),
                "median_ms": float(median_ms),
                "ratio": None,
                "against": ex.get("ratio_reference"),
                "ref_ms": ex.get("ratio_reference_ms"),
                "mem": ex.get("peak_extra_mb", ex.get("peak_mem_mb")),
                "targets": ex.get("targets") or [],
                "target_note": ex.get("target_note"),
                "target_met": ex.get("target_met"),
                "figures": ", ".join(figures),
                "paper": _paper(ex.get("paper")),
                "note": ex.get("shape_note", ""),
                "shape": str(ex.get("shape", "")),
                "device_name": ex.get("device_name"),
            }
        )
    # keep each group together, groups in order of first appearance (the JSON interleaves them)
    first, shapes = {}, {}
    for r in out:
        first.setdefault(r["group"], len(first))
        shapes.setdefault(r["group"], set()).add(r["shape"])
    for r in out:  # rows of one group at different shapes: say which is which
        if len(shapes[r["group"]]) > 1 and r["shape"]:
            r["name"] += f" {r['shape']}"
    _ratios(out)
    return sorted(out, key=lambda r: first[r["group"]])


def _ratios(out: list[dict]) -> None:
    """Set each row's ``ratio`` = reference median / own median (see the module docstring)."""
    for r in out:
        if not r["against"]:
            continue
        peer = next((q for q in out if q["group"] == r["group"] and q["shape"] == r["shape"]
                     and q["key"] == r["against"]), None)
        ref_ms = peer["median_ms"] if peer is not None else r["ref_ms"]
        if isinstance(ref_ms, (int, float)) and not isinstance(ref_ms, bool) and ref_ms > 0 and r["median_ms"] > 0:
            r["ratio"] = float(ref_ms) / r["median_ms"]


def _num(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.3g}" if a < 1 else f"{v:.2f}"
    return f"{v:.2e}"


def _paper(p) -> str:
    if p is None:
        return ""
    if isinstance(p, dict):
        return "; ".join(f"{k} {v}" for k, v in p.items())
    return str(p)


def _target_text(targets, note=None, met=None) -> str:
    parts = []
    if note:  # an absolute target: recorded, never asserted
        parts.append(f"{note}: {'ok' if met else 'MISSED'}")
    for t in targets:
        ok = "ok" if t.get("met") else "MISSED"
        paired = t.get("ratio")
        got = f" (paired {_num(float(paired))}x vs {t.get('against')})" if isinstance(paired, (int, float)) else ""
        parts.append(f">={float(t.get('min', 0)):g}x {ok}{got}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Printing


COLUMNS = ("name", "median ms", "ratio", "peak extra MB", "target", "figures", "paper")
#: printed under the tables: what the ratio column is
RATIO_NOTE = ("ratio = the reference's median / this row's median (reference named after 'vs'; 1.00x: the "
              "reference itself); targets are checked on the paired ratio shown beside them")


def _cells(r: dict) -> list[str]:
    ratio = ""
    if isinstance(r["ratio"], (int, float)):
        ratio = f"{_num(float(r['ratio']))}x vs {r['against']}"
    mem = _num(float(r["mem"])) if isinstance(r["mem"], (int, float)) else ""
    return [r["name"], _num(r["median_ms"]), ratio, mem, _target_text(r["targets"], r["target_note"], r["target_met"]), r["figures"], r["paper"]]


def table(rs: list[dict], fmt: str = "text") -> str:
    """The summary as text: a block per group (text) or one table with a group column (markdown)."""
    if fmt == "markdown":
        lines = ["| group | " + " | ".join(COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
        for r in rs:
            cells = [c.replace("|", "\\|") for c in [r["group"]] + _cells(r)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    groups: dict[str, list[dict]] = {}
    for r in rs:
        groups.setdefault(r["group"], []).append(r)
    blocks = []
    for g, grs in groups.items():
        cells = [_cells(r) for r in grs]
        # drop columns that are empty in the whole group so the table stays narrow
        keep = [i for i in range(len(COLUMNS)) if i < 2 or any(c[i] for c in cells)]
        widths = [max(len(COLUMNS[i]), *(len(c[i]) for c in cells)) for i in keep]
        head = "  ".join(COLUMNS[i].ljust(w) for i, w in zip(keep, widths))
        notes = list(dict.fromkeys(r["note"] for r in grs if r["note"]))
        lines = [g] + [f"  [{n}]" for n in notes] + ["  " + head, "  " + "-" * len(head)]
        for c in cells:
            lines.append("  " + "  ".join(c[i].ljust(w) for i, w in zip(keep, widths)).rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def header(data: dict, rs: list[dict]) -> str:
    mi = data.get("machine_info") or {}
    cpu = (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor") or "?"
    devices = sorted({r["device_name"] for r in rs if r["device_name"]})
    when = data.get("datetime", "?")
    return f"pytest-benchmark run of {when} on {mi.get('node', '?')} (CPU: {cpu}); devices: {', '.join(devices) or '?'}"


def summary(rs: list[dict]) -> str:
    targets = [t for r in rs for t in r["targets"]]
    missed = [t for t in targets if not t.get("met")]
    text = f"{len(rs)} benchmarks; {len(targets) - len(missed)}/{len(targets)} targets met"
    for t in missed:
        text += f"\n  MISSED: {t.get('label')}: {_num(float(t.get('ratio', float('nan'))))}x vs {t.get('against')}, target >= {float(t.get('min', 0)):g}x"
    return text


# ---------------------------------------------------------------------------------------------
# Plotting


def _pyplot():
    """matplotlib's pyplot (Agg), or CLIError saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CLIError("--plot needs matplotlib, which is not installed: pip install matplotlib") from None
    return plt


def plot(rs: list[dict], out) -> None:
    """Horizontal bars of the median time per benchmark (log scale), ratio written beside each,
    one colour per backend with a legend."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    if not rs:
        raise CLIError("--plot: no benchmarks to plot")
    labels = [f"{r['group']} | {r['name']}" for r in rs]
    values = [max(r["median_ms"], 1e-6) for r in rs]
    names = sorted({r["name"] for r in rs})
    cmap = plt.get_cmap("tab10")
    colours = [cmap(names.index(r["name"]) % 10) for r in rs]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rs) + 1.5))
    y = list(range(len(rs)))[::-1]
    ax.barh(y, values, color=colours)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("median time per call (ms, log scale)")
    for yi, v, r in zip(y, values, rs):
        if isinstance(r["ratio"], (int, float)) and r["ratio"] != 1.0:
            ax.text(v, yi, f" {_num(float(r['ratio']))}x", va="center", fontsize=7)
    ax.set_title("hfkernels benchmarks (ratio = reference median / this median, same run)", fontsize=9)
    used = [n for n in names if any(r["name"] == n for r in rs)]
    ax.legend(handles=[Patch(color=cmap(names.index(n) % 10), label=n) for n in used], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), title="colour: row name", title_fontsize=7)
    fig.tight_layout()
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise CLIError(f"--plot: folder {out.parent} does not exist")
    fig.savefig(os.fspath(out), dpi=120)
    plt.close(fig)


def run(args) -> int:
    if args.plot:
        from ..io import check_outputs

        _pyplot()  # before any work: a missing matplotlib should not come after the whole table
        check_outputs([("--plot", args.plot)], [args.result], overwrite=args.overwrite)
    data = load(args.result)
    rs = rows(data, args.group)
    if not rs:
        raise CLIError(f"RESULT.json: no benchmarks{' in a group containing ' + repr(args.group) if args.group else ''}")
    print(header(data, rs))
    print()
    print(table(rs, args.format))
    print()
    print(RATIO_NOTE)
    print(summary(rs))
    if args.plot:
        plot(rs, args.plot)
        print(f"chart written to {args.plot}")
    return 0
