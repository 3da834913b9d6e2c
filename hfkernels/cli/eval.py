"""``hfkernels eval``: the fusion metrics over a folder of image pairs, and the paper's baseline table.

Examples::

    hfkernels eval --vis DATA/vi --ir DATA/ir --fused OUT --json m.json --csv m.csv
    hfkernels eval --data DATA/TNO --method laplacian --metrics EN,MI,VIF,Qabf,SSIM,SD
    hfkernels eval --data DATA/TNO --checkpoint runs/msrs
    hfkernels eval --data DATA/TNO --baselines      # the paper's baseline rows, as a table
    hfkernels eval --data DATA/MSRS --checkpoint runs/msrs --baselines --report out/msrs   # + a results page

Images: the visible image is decoded as RGB (a gray file becomes 3 equal channels), the infrared
image as 8-bit gray, and a fused file as it is stored (1 or 3 channels); all in [0, 1]. That is the
decoding the published reference values use.

Fusions computed on the fly (``--method`` / ``--checkpoint``; in float, not rounded to 8 bits):

- ``vis`` / ``ir``: the visible / infrared image itself as the fused image;
- ``laplacian``: the paper's Laplacian baseline, ``fuse(vis_rgb, ir, w)`` on all three RGB
  channels with ``w`` the heuristic guidance, clamped to [0, 1];
- ``blend``: the paper's heuristic per-pixel blend ``(1 - w) vis + w ir``;
- ``heuristic``, a constant ``c`` in [0, 1], or ``--checkpoint RUN``: the colour path of
  ``hfkernels fuse`` (``fuse_color``: fuse the luma, keep the chroma) with that guidance, so the
  numbers are those of ``hfkernels fuse --mu ...`` without the 8-bit rounding of the written file.

``--baselines`` evaluates vis, ir, laplacian, blend and the Laplacian fusion with mu = 0.5 (on
RGB channels) and prints the mean of each metric as a table — the rows the paper's tables list.

``--json`` is strict JSON: a value that does not exist (NaN) or is infinite is written as
``null``. ``--csv`` writes Python's ``repr`` of each float (``nan``, ``inf`` included). Output
files are never inputs, and replace existing files only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import torch

from . import CLIError, parse_device

METHODS = ("vis", "ir", "laplacian", "blend", "heuristic")
#: (row label, fusion spec) of the baseline table
BASELINES = (
    ("visible as fused", "vis"),
    ("infrared as fused", "ir"),
    ("Laplacian, heuristic guidance", "laplacian"),
    ("heuristic per-pixel blend", "blend"),
    ("Laplacian, mu = 0.5", "laplacian:0.5"),
)


def register(sub):
    p = sub.add_parser(
        "eval", help="fusion metrics over a folder of image pairs (or the paper's baseline table)",
        description="Compute EN, MI, VIF, Qabf, SSIM, SD, SF, AG, SCD, CC, PSNR, MSE, Nabf for every "
                    "pair of a dataset, with per-image rows and the mean.",
    )
    p.add_argument("--data", metavar="DIR", help="dataset folder holding vi/ and ir/ (instead of --vis/--ir)")
    p.add_argument("--vis", metavar="DIR", help="visible images (first source): folder or one file")
    p.add_argument("--ir", metavar="DIR", help="infrared images (second source): folder or one file")
    # fusion sources: at least one; several at once print a table of means per fusion
    g = p.add_argument_group("fusions (one or more)")
    g.add_argument("--fused", metavar="DIR", help="fused images to score: folder (matched by name) or one file")
    g.add_argument("--method", metavar="M",
                   help="fuse on the fly: vis | ir | laplacian | blend | heuristic | a constant mu in [0,1] "
                        "(several: comma-separated)")
    g.add_argument("--checkpoint", metavar="RUN", help="fuse on the fly with a trained run's guidance")
    g.add_argument("--baselines", action="store_true", help="the paper's baseline rows (as a table)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated subset (default: all; with --baselines: EN,MI,VIF,Qabf,SSIM,SD)")
    p.add_argument("--protocol", choices=("paper", "standard"), default="paper",
                   help="paper: the published protocol, quirks included (default); standard: textbook")
    p.add_argument("--json", metavar="FILE", help="write per-image values and means as JSON")
    p.add_argument("--csv", metavar="FILE", help="write per-image values and the mean as CSV")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --json/--csv files (and a --report page) that already exist")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--backend", default=None, help="fusion backend for on-the-fly fusions")
    p.add_argument("--levels", type=int, default=4, help="pyramid levels of on-the-fly fusions")
    p.add_argument("--quiet", action="store_true", help="no per-image rows on the terminal")
    p.add_argument("--report", metavar="DIR",
                   help="also write a results page, DIR/index.html (tables, pictures, plots; opens from disk)")
    p.add_argument("--report-limit", type=int, metavar="N",
                   help="pictures for at most N pairs on the page, spread over the set (metrics cover all)")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------
# pairs


def _sources(args) -> tuple[Path, Path]:
    if args.data:
        if args.vis or args.ir:
            raise CLIError("give either --data or --vis/--ir, not both")
        d = Path(args.data)
        if not d.is_dir():
            raise CLIError(f"--data {d} is not a folder")
        for vi, ir in (("vi", "ir"), ("test/vi", "test/ir")):
            if (d / vi).is_dir() and (d / ir).is_dir():
                return d / vi, d / ir
        raise CLIError(f"--data {d} holds no vi/ and ir/ folders (nor test/vi, test/ir)")
    if not args.vis or not args.ir:
        raise CLIError("give --vis and --ir (or --data DIR holding vi/ and ir/)")
    vis, ir = Path(args.vis), Path(args.ir)
    for name, p in (("--vis", vis), ("--ir", ir)):
        if not p.exists():
            raise CLIError(f"{name} {p} does not exist")
    if vis.is_dir() != ir.is_dir():
        raise CLIError("--vis and --ir must both be folders or both be files")
    return vis, ir


def collect_jobs(vis: Path, ir: Path, fused: Path | None):
    """[(name, vis_path, ir_path, fused_path | None)]; every unmatched file is an error."""
    from ..io import describe_unmatched, match_pairs

    if vis.is_file():
        if fused is not None and not fused.is_file():
            raise CLIError(f"--fused {fused} must be a file when --vis and --ir are files")
        return [(vis.name, vis, ir, fused)]
    res = match_pairs(vis, ir, strict=False)
    problems = [describe_unmatched(vis, ir, res)] if (res.only_a or res.only_b) else []
    fused_of = {}
    if fused is not None:
        if not fused.is_dir():
            raise CLIError(f"--fused {fused} must be a folder when --vis and --ir are folders")
        rf = match_pairs(vis, fused, strict=False)
        fused_of = dict(rf.pairs)
        if rf.only_a or rf.only_b:
            problems.append(describe_unmatched(vis, fused, rf))
            if any(p.name.startswith("MU_") for p in rf.only_b):
                problems.append(f"  (MU_*.png are guidance maps of an older `hfkernels fuse --save-mu`, which now "
                                f"writes them to {fused / 'mu'}; move them out of {fused})")
    if problems:
        raise CLIError("\n".join(problems))
    return [(a.name, a, b, fused_of.get(a)) for a, b in res.pairs]


# --------------------------------------------------------------------------------------------
# fusions


def make_fusion(spec: str, args, device):
    """``f(vis (1,3,H,W), ir (1,1,H,W)) -> fused`` for a method name, a constant, 'laplacian:c',
    or 'checkpoint' (the run in ``args.checkpoint``)."""
    import hfkernels

    levels, backend = args.levels, args.backend
    if spec == "vis":
        return lambda vis, ir: vis
    if spec == "ir":
        return lambda vis, ir: ir

    def guided(mu_fn, blend):
        # `.guidance` and `.blend` let `--report` show the map without computing it twice
        fn = lambda vis, ir: blend(vis, ir, mu_fn(vis, ir))  # noqa: E731
        fn.guidance, fn.blend = mu_fn, blend
        return fn

    def lap(vis, ir, mu):
        return hfkernels.fuse(vis, ir, mu, levels, backend=backend).clamp(0, 1)

    if spec == "laplacian":
        return guided(hfkernels.heuristic_guidance, lap)
    if spec.startswith("laplacian:"):
        c = float(spec.split(":", 1)[1])
        return guided(lambda vis, ir: torch.full_like(ir[:, :1], c), lap)
    if spec == "blend":
        fn = lambda vis, ir: hfkernels.heuristic_blend(vis, ir).clamp(0, 1)  # noqa: E731
        fn.guidance = hfkernels.heuristic_guidance
        return fn
    # heuristic, a constant, or "checkpoint" (args.checkpoint): the colour path of `hfkernels fuse`
    from .fuse import guidance_fn

    ck = args.checkpoint if spec == "checkpoint" else None
    mu_fn = guidance_fn(argparse.Namespace(checkpoint=ck, mu="heuristic" if ck else spec), device)
    return guided(lambda vis, ir: mu_fn(vis, ir).clamp(0, 1),
                  lambda vis, ir, mu: hfkernels.fuse_color(vis, ir, mu, levels, backend=backend))


def _check_method(spec: str) -> str:
    if spec in METHODS:
        return spec
    try:
        c = float(spec)
    except ValueError:
        raise CLIError(f"--method must be one of {', '.join(METHODS)} or a constant in [0, 1], got {spec!r}") from None
    if not 0.0 <= c <= 1.0:
        raise CLIError(f"--method constant must lie in [0, 1], got {c}")
    return spec


#: row label of each --method fusion (the baselines' labels where they are the same fusion)
METHOD_LABELS = {"vis": "visible as fused", "ir": "infrared as fused", "laplacian": "Laplacian, heuristic guidance",
                 "blend": "heuristic per-pixel blend", "heuristic": "fuse_color, heuristic guidance"}


def fusions_of(args, device) -> tuple[dict, dict]:
    """Every fusion the arguments ask for: ``({label: fusion or None (the --fused files)},
    {label: source description})``, in the order --fused, --checkpoint, --method, --baselines
    (a baseline already asked for by --method is not repeated)."""
    fusions, sources = {}, {}
    if args.fused:
        label = f"fused files {Path(args.fused).name}"
        fusions[label], sources[label] = None, str(args.fused)
    if args.checkpoint:
        label = f"checkpoint {Path(args.checkpoint).name}"
        fusions[label], sources[label] = make_fusion("checkpoint", args, device), f"checkpoint {args.checkpoint}"
    for spec in (args.method.split(",") if args.method else []):
        spec = _check_method(spec.strip())
        label = METHOD_LABELS.get(spec, f"fuse_color, mu = {spec}")
        fusions[label], sources[label] = make_fusion(spec, args, device), f"method {spec}"
    if args.baselines:
        for label, spec in BASELINES:
            if label not in fusions:
                fusions[label], sources[label] = make_fusion(spec, args, device), f"method {spec}"
    if not fusions:
        # a usage error, as argparse reports its own (status 2, before any work)
        import sys

        print("hfkernels eval: error: give at least one of --fused, --method, --checkpoint, --baselines "
              "(several may be combined)", file=sys.stderr)
        raise SystemExit(2)
    return fusions, sources


# --------------------------------------------------------------------------------------------
# evaluation


def _size(t):
    return f"{t.shape[-1]}x{t.shape[-2]}"


def evaluate_jobs(jobs, fusions: dict, names, protocol: str, device, desc: str = "eval"):
    """Score every pair under every fusion.

    Args:
        jobs: from :func:`collect_jobs`.
        fusions: label -> fusion callable, or None to read the job's fused file.
    Returns:
        {label: {image name: {metric: float}}}. Raises CLIError listing every unreadable file
        and every pair whose sizes disagree (after trying all pairs).
    """
    from tqdm import tqdm

    from ..io import read_image
    from ..metrics import evaluate

    out = {label: {} for label in fusions}
    problems = []
    for name, vp, ip, fp in tqdm(jobs, desc=desc, unit="pair", disable=len(jobs) < 2):
        try:
            vis = read_image(vp, "rgb")[None]
            ir = read_image(ip, "gray")[None]
            fused_file = read_image(fp, "keep")[None] if fp is not None else None
        except ValueError as e:
            problems.append(str(e))
            continue
        sizes = [("vis", vp, vis), ("ir", ip, ir)] + ([("fused", fp, fused_file)] if fp is not None else [])
        if len({tuple(t.shape[-2:]) for _, _, t in sizes}) > 1:
            problems.append("sizes disagree: " + ", ".join(f"{k} {p} is {_size(t)}" for k, p, t in sizes))
            continue
        vis, ir = vis.to(device), ir.to(device)
        for label, fn in fusions.items():
            with torch.no_grad():
                fused = fused_file.to(device) if fn is None else fn(vis, ir)
                try:
                    vals = evaluate(vis, ir, fused, names, protocol)
                except ValueError as e:
                    problems.append(f"{name}: {e}")
                    break
            # exactly the metrics asked for, in their order: the JSON/CSV header lists these
            out[label][name] = {m: float(vals[m][0]) for m in names}
    if problems:
        raise CLIError(
            f"{len(problems)} of {len(jobs)} pair(s) could not be evaluated (no results written):\n  "
            + "\n  ".join(problems)
        )
    return out


def means(rows: dict) -> dict:
    """{image: {metric: v}} -> {metric: mean over images}."""
    names = next(iter(rows.values())).keys() if rows else []
    return {m: math.fsum(r[m] for r in rows.values()) / len(rows) for m in names}


def format_table(rows: dict, names, first: str = "image") -> str:
    """Fixed-width text table of {row label: {metric: value}}."""
    w0 = max([len(first)] + [len(k) for k in rows])
    cols = [max(len(m), 9) for m in names]
    lines = [f"{first:<{w0}}  " + "  ".join(f"{m:>{c}}" for m, c in zip(names, cols))]
    for label, r in rows.items():
        lines.append(f"{label:<{w0}}  " + "  ".join(f"{r[m]:>{c}.4f}" for m, c in zip(names, cols)))
    return "\n".join(lines)


def json_safe(obj):
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, so that it serialises
    as strict JSON (``null``); dicts, lists and tuples are copied, other values kept."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dump_json(path, obj) -> None:
    """Write ``obj`` as strict JSON (non-finite floats as null), atomically."""
    from ..io import write_output

    text = json.dumps(json_safe(obj), indent=1, allow_nan=False)
    write_output(path, (text + "\n").encode())


def _dump_csv(path, header, lines) -> None:
    import io

    from ..io import write_output

    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(lines)
    write_output(path, buf.getvalue().encode())


def write_json(path, rows, mean, names, protocol, source):
    dump_json(path, {"protocol": protocol, "source": source, "metrics": list(names),
                     "per_image": rows, "mean": mean})


def write_csv(path, rows, mean, names):
    lines = [[name, *(repr(r[m]) for m in names)] for name, r in rows.items()]
    _dump_csv(path, ["image", *names], lines + [["mean", *(repr(mean[m]) for m in names)]])


def run(args) -> int:
    from ..metrics import PAPER_METRICS, check_names

    try:
        names = check_names(args.metrics if args.metrics else (PAPER_METRICS if args.baselines else None))
    except ValueError as e:
        raise CLIError(f"--metrics: {e}") from None
    device = parse_device(args.device)
    vis, ir = _sources(args)
    fused = Path(args.fused) if args.fused else None
    if fused is not None and not fused.exists():
        raise CLIError(f"--fused {fused} does not exist")
    if args.report_limit is not None and (not args.report or args.report_limit < 0):
        raise CLIError("--report-limit needs --report DIR" if not args.report
                       else f"--report-limit must be >= 0, got {args.report_limit}")
    jobs = collect_jobs(vis, ir, fused)
    check_eval_outputs(args, jobs, vis, ir, fused)
    fusions, sources = fusions_of(args, device)

    if args.baselines or len(fusions) > 1:
        res = evaluate_jobs(jobs, fusions, names, args.protocol, device,
                            desc="baselines" if args.baselines and len(fusions) == len(BASELINES) else "eval")
        table = {label: means(rows) for label, rows in res.items()}
        print(f"{vis.parent if vis.is_dir() else vis}: {len(jobs)} pair(s), protocol {args.protocol!r}, mean per fusion")
        print(format_table(table, names, first="fusion"))
        if args.json:
            dump_json(args.json, {"protocol": args.protocol, "metrics": list(names), "pairs": len(jobs),
                                  "mean": table, "per_image": res})
        if args.csv:
            _baseline_csv(args.csv, table, names)
        _report(args, vis, ir, jobs, fusions, res, names, device)
        return 0

    (label, fn), = fusions.items()
    source = sources[label]
    rows = evaluate_jobs(jobs, {"fused": fn}, names, args.protocol, device)["fused"]
    mean = means(rows)
    if not args.quiet:
        print(format_table({**rows, "mean": mean}, names))
    else:
        print(format_table({"mean": mean}, names))
    if args.json:
        write_json(args.json, rows, mean, names, args.protocol, source)
    if args.csv:
        write_csv(args.csv, rows, mean, names)
    _report(args, vis, ir, jobs, fusions, {label: rows}, names, device)
    return 0


def _report(args, vis: Path, ir: Path, jobs, fusions, scores, names, device) -> None:
    """``--report DIR``: the results page of this evaluation (see :mod:`hfkernels.report`)."""
    if not args.report:
        return
    from ..report import ReportSet, history_of, paper_dataset, pairs_from_jobs, write_report

    folder = vis.parent if vis.is_dir() else vis.parent.parent
    # MSRS keeps its split one level down (MSRS/test/vi): name the set "MSRS-test"
    name = f"{folder.parent.name}-{folder.name}" if folder.name in ("test", "train") else folder.name
    history, baseline = history_of(args.checkpoint) if args.checkpoint else (None, None)
    page = write_report(
        args.report, [ReportSet(name or str(vis), pairs_from_jobs(jobs), fusions, scores, list(names),
                                paper_key=paper_dataset(vis, ir))],
        title=f"hfkernels eval: {name}", protocol=args.protocol, history=history, baseline=baseline,
        limit=args.report_limit, overwrite=args.overwrite, device=device,
        meta=[f"{len(jobs)} pair(s): {vis} + {ir}"], progress=not args.quiet)
    print(f"report: {page}")


def _baseline_csv(path, table, names):
    _dump_csv(path, ["fusion", *names], [[label, *(repr(r[m]) for m in names)] for label, r in table.items()])


#: options of ``eval`` that name a file it writes (another module may add to it)
OUTPUT_OPTIONS = ["json", "csv"]


def check_eval_outputs(args, jobs, vis, ir, fused) -> None:
    """Refuse, before any evaluation, outputs that are inputs or exist (without --overwrite)."""
    from ..io import check_outputs
    from .fuse import checkpoint_files

    outputs = [(f"--{o}", getattr(args, o)) for o in OUTPUT_OPTIONS if getattr(args, o, None)]
    inputs = [vis, ir, fused, *(p for job in jobs for p in job[1:])]
    if args.checkpoint:
        inputs += checkpoint_files(args.checkpoint)
    if getattr(args, "report", None):
        from ..report import ASSETS

        outputs += [("--report", Path(args.report) / "index.html")]
        # the page's picture folder is replaced as a whole: it must not hold an input either
        assets = (Path(args.report) / ASSETS).resolve()
        inside = [p for p in inputs if p is not None and assets in (Path(p).resolve(), *Path(p).resolve().parents)]
        if inside:
            raise CLIError(f"--report {args.report}: its folder {ASSETS}/ holds the input {inside[0]}; "
                           "choose another report folder")
    check_outputs(outputs, inputs, overwrite=args.overwrite)
