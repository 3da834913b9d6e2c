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

Fusions computed on the fly (``--method`` / ``--checkpoint``; in float, not rounded to 8 bits)
are those of :func:`hfkernels.evaluation.method`; ``heuristic``, a constant and ``--checkpoint``
take the colour path of ``hfkernels fuse``, so their numbers are those of ``hfkernels fuse``
without the 8-bit rounding of the written file.

``--baselines`` evaluates the visible and infrared images as fused images, the heuristic
guidance, the heuristic per-pixel blend and mu = 0.5, and prints the mean of each metric as a
table — the rows the paper's tables list — with the paper's published rows for the dataset below
them (protocol "paper"). Every guided row of one table takes the same fusion path (``--path``:
``color`` = :func:`hfkernels.fuse_color`, the path of ``hfkernels fuse``; ``rgb`` = every RGB
channel, the paper's Laplacian baseline), and the table says which.

``--data DIR`` reads every layout ``hfkernels train`` reads (:func:`hfkernels.io.datasets.find_sets`,
the test split of MSRS); a folder of several sets (``Harvard``) gets one table per set, and its
``--fused`` folder one sub-folder per set (``FUSED/Harvard_CT-MRI``, as ``python/fuse_folder.py``
writes them).

Scores: with protocol "paper", MI, VIF and SSIM are sums over the two sources (fused vs visible
plus fused vs infrared), so they range over 0-2, not 0-1 (docs/design.md, section 8); that is
also why "visible as fused" wins several columns: the fused image *is* one of the two sources,
which gives a perfect score against it.

``--json`` is strict JSON: a value that does not exist (NaN) or is infinite is written as
``null``. ``--csv`` writes Python's ``repr`` of each float (``nan``, ``inf`` included). Output
files are never inputs, and replace existing files only with ``--overwrite``.
"""
from __future__ import annotations

import csv
from pathlib import Path

from .. import evaluation
from ..evaluation import BASELINES, dump_json, format_table, means
from . import CLIError, parse_device, source_paths


def register(sub):
    p = sub.add_parser(
        "eval", help="fusion metrics over a folder of image pairs (or the paper's baseline table)",
        description="Compute EN, MI, VIF, Qabf, SSIM, SD, SF, AG, SCD, CC, PSNR, MSE, Nabf for every "
                    "pair of a dataset, with per-image rows and the mean.",
    )
    p.add_argument("--data", metavar="DIR",
                   help="dataset folder in any layout train reads: DIR/vi+ir (also visible/infrared), MSRS "
                        "(its test split), a Harvard X-MRI set or the Harvard folder (one table per set)")
    p.add_argument("--vis", metavar="DIR", help="visible images (first source): folder or one file")
    p.add_argument("--ir", metavar="DIR", help="infrared images (second source): folder or one file")
    # fusion sources: at least one; several at once print a table of means per fusion
    g = p.add_argument_group("fusions (one or more)")
    g.add_argument("--fused", metavar="DIR", help="fused images to score: folder (matched by name) or one file")
    g.add_argument("--method", metavar="M",
                   help="fuse on the fly: vis | ir | laplacian | blend | heuristic | guide (the packaged "
                        "trained guide) | a constant mu in [0,1] (several: comma-separated)")
    g.add_argument("--checkpoint", metavar="RUN", help="fuse on the fly with a trained run's guidance")
    g.add_argument("--baselines", action="store_true",
                   help="the paper's baseline rows (as a table, with the paper's published rows for the dataset)")
    p.add_argument("--path", choices=tuple(evaluation.PATHS), default="color",
                   help="fusion path of every guided row: color = fuse_color (fuse the luma, keep the visible "
                        "Cb/Cr; the path of hfkernels fuse), rgb = every RGB channel (the paper's Laplacian "
                        "baseline); default: %(default)s")
    p.add_argument("--metrics", default=None,
                   help="comma-separated subset (default: all; with --baselines: EN,MI,VIF,Qabf,SSIM,SD)")
    p.add_argument("--protocol", choices=("paper", "standard"), default="paper",
                   help="paper: the published protocol, quirks included (default): MI, VIF and SSIM are summed "
                        "over both sources, so they run 0-2 and a source used as the fused image scores high; "
                        "standard: textbook")
    p.add_argument("--json", metavar="FILE", help="write per-image values and means as JSON")
    p.add_argument("--csv", metavar="FILE", help="write per-image values and the mean as CSV")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --json/--csv files (and a --report page) that already exist")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--backend", default=None,
                   help="fusion backend for on-the-fly fusions: triton | cuda | cpu | torch (default: the best "
                        "available, see hfkernels info)")
    p.add_argument("--levels", type=int, default=4, help="pyramid levels of on-the-fly fusions (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no per-image rows on the terminal")
    p.add_argument("--report", metavar="DIR",
                   help="also write a results page, DIR/index.html (tables, pictures, plots; opens from disk)")
    p.add_argument("--report-limit", type=int, metavar="N",
                   help="pictures for at most N pairs (or frames of a clip) on the page, spread over the set "
                        "(metrics cover all; default: every pair, 8 frames of a clip)")
    from ..video.cli import add_eval_options

    add_eval_options(p)
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------
# pairs


def _sets(args) -> list[tuple[str, Path, Path, Path | None]]:
    """``[(set name, vis, ir, fused or None)]``: the pair sets the arguments name. ``--data`` goes
    through the layout reader ``hfkernels train`` uses (:func:`hfkernels.io.datasets.find_sets`)."""
    fused = Path(args.fused) if args.fused else None
    if args.data:
        from ..io.datasets import DataError, find_sets

        if args.vis or args.ir:
            raise CLIError("give either --data or --vis/--ir, not both")
        try:
            found = find_sets(args.data, split="test")
        except DataError as e:
            raise CLIError(f"--data: {e}") from None
        # several sets: one fused sub-folder per set, named as python/fuse_folder.py names them
        return [(s.name, s.vis_dir, s.ir_dir,
                 fused / s.name.replace("/", "_") if fused is not None and len(found) > 1 else fused)
                for s in found]
    if not args.vis or not args.ir:
        raise CLIError("give --vis and --ir (or --data DIR)")
    vis, ir = source_paths(args.vis, args.ir)
    folder = vis.parent if vis.is_dir() else vis.parent.parent
    # MSRS keeps its split one level down (MSRS/test/vi): name the set "MSRS-test"
    name = f"{folder.parent.name}-{folder.name}" if folder.name in ("test", "train") else folder.name
    return [(name or str(vis), vis, ir, fused)]


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


def fusions_of(args, device) -> tuple[dict, dict]:
    """Every fusion the arguments ask for: ``({label: fusion or None (the --fused files)},
    {label: source description})``, in the order --fused, --checkpoint, --method, --baselines
    (a baseline already asked for by --method is not repeated)."""
    from .. import guidance

    levels, backend = args.levels, args.backend
    fusions, sources = {}, {}
    if args.fused:
        label = f"fused files {Path(args.fused).name}"
        fusions[label], sources[label] = None, str(args.fused)
    if args.checkpoint:
        label = f"checkpoint {Path(args.checkpoint).name}"
        fusions[label] = evaluation.pyramid(guidance.resolve(checkpoint=args.checkpoint, device=device), levels, backend, args.path)
        sources[label] = f"checkpoint {args.checkpoint}"
    for spec in (args.method.split(",") if args.method else []):
        spec = spec.strip()
        try:
            fusion = evaluation.method(spec, levels, backend, name="--method", path=args.path)
        except ValueError as e:
            raise CLIError(str(e)) from None
        fusions[evaluation.label(spec)], sources[evaluation.label(spec)] = fusion, f"method {spec}"
    if args.baselines:
        for label, spec in BASELINES:
            if label not in fusions:
                fusions[label], sources[label] = evaluation.method(spec, levels, backend, path=args.path), f"method {spec}"
    if not fusions:
        # a usage error, as argparse reports its own (status 2, before any work)
        import sys

        print("hfkernels eval: error: give at least one of --fused, --method, --checkpoint, --baselines "
              "(several may be combined)", file=sys.stderr)
        raise SystemExit(2)
    try:
        evaluation.check_one_path(fusions)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return fusions, sources


# --------------------------------------------------------------------------------------------
# evaluation


def score_jobs(pairs, fusions: dict, names, protocol: str, device, desc: str = "eval", keep=None) -> dict:
    """:func:`hfkernels.evaluation.score` of the pairs (with a progress bar; ``keep`` as there);
    pairs that cannot be evaluated become one CLIError listing each of them."""
    try:
        return evaluation.score(pairs, fusions, names, protocol, device, keep=keep, progress=True, desc=desc)
    except evaluation.EvaluationError as e:
        raise CLIError(
            f"{len(e.problems)} of {e.total} pair(s) could not be evaluated (no results written):\n  "
            + "\n  ".join(e.problems)
        ) from None


def _dump_csv(path, header, lines) -> None:
    import io

    from ..io import write_output

    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(lines)
    write_output(path, buf.getvalue().encode())


def run(args) -> int:
    from ..metrics import PAPER_METRICS, check_names

    try:
        names = check_names(args.metrics if args.metrics else (PAPER_METRICS if args.baselines else None))
    except ValueError as e:
        raise CLIError(f"--metrics: {e}") from None
    device = parse_device(args.device)
    if _video(args, names, device):
        return 0
    sets = _sets(args)
    if args.fused and not Path(args.fused).exists():
        raise CLIError(f"--fused {args.fused} does not exist")
    if args.report_limit is not None and (not args.report or args.report_limit < 0):
        raise CLIError("--report-limit needs --report DIR" if not args.report
                       else f"--report-limit must be >= 0, got {args.report_limit}")
    jobs = {name: collect_jobs(vis, ir, fused) for name, vis, ir, fused in sets}
    check_eval_outputs(args, [j for js in jobs.values() for j in js],
                       *(p for _, vis, ir, fused in sets for p in (vis, ir, fused)))
    if args.report and args.checkpoint:
        from ..evaluation.report import history_of

        history_of(args.checkpoint)  # a damaged run record is named now, not after the evaluation
    fusions, sources = fusions_of(args, device)
    path = evaluation.check_one_path(fusions)
    table_mode = args.baselines or len(fusions) > 1
    done = []  # (set name, vis, ir, pairs, {label: rows}, pictures)
    for name, vis, ir, _ in sets:
        pairs = evaluation.pairs_from_files(jobs[name])
        pictures = None
        if args.report:
            from ..evaluation.report import ReportPictures

            # the page's pictures are written while the pairs are scored: no fusion runs twice
            pictures = ReportPictures(args.report, pairs, fusions, args.report_limit, overwrite=args.overwrite)
        desc = "baselines" if args.baselines and len(fusions) == len(BASELINES) else "eval"
        res = score_jobs(pairs, fusions, names, args.protocol, device, keep=pictures,
                         desc=desc if len(sets) == 1 else f"{desc} {name}")
        done.append((name, vis, ir, pairs, res, pictures))
        _print_set(args, name, vis, ir, len(pairs), res, names, path, table_mode, several=len(sets) > 1)
    objs, lines = {}, []
    for name, vis, ir, pairs, res, _ in done:
        prefix = f"{name}/" if len(done) > 1 else ""
        if table_mode:
            table = {label: means(rows) for label, rows in res.items()}
            objs[name] = {"protocol": args.protocol, "path": path, "metrics": list(names), "pairs": len(pairs),
                          "mean": table, "per_image": res}
            lines += [[prefix + label, *(repr(r[m]) for m in names)] for label, r in table.items()]
        else:
            (label,) = fusions
            rows = res[label]
            mean = means(rows)
            objs[name] = {"protocol": args.protocol, "source": sources[label], "metrics": list(names),
                          "per_image": rows, "mean": mean}
            lines += [[prefix + k, *(repr(r[m]) for m in names)] for k, r in {**rows, "mean": mean}.items()]
    if args.json:
        dump_json(args.json, objs[done[0][0]] if len(done) == 1 else {"protocol": args.protocol, "sets": objs})
    if args.csv:
        _dump_csv(args.csv, ["fusion" if table_mode else "image", *names], lines)
    _report(args, done, fusions, names, device, path)
    return 0


def _paper_rows(args, vis: Path, ir: Path, name: str) -> dict:
    """The paper's published means for this set (``{label: {metric: value}}``; empty when the
    set is not one of the paper's or the protocol is not "paper"), as the results page shows them."""
    from ..evaluation.report import PAPER_ROWS, paper_dataset

    key = paper_dataset(vis, ir, name) if args.protocol == "paper" else None
    return dict(PAPER_ROWS.get(key, [])) if key else {}


def _print_set(args, name, vis, ir, n_pairs, res, names, path, table_mode, several: bool) -> None:
    """The terminal's view of one set: a table of means per fusion (or per-image rows of the one
    fusion), the paper's published rows for the set, and the fusion path."""
    src = vis.parent if vis.is_dir() else vis
    paper = _paper_rows(args, vis, ir, name)
    if table_mode:
        print(f"{name if several else src}: {n_pairs} pair(s), protocol {args.protocol!r}, mean per fusion")
        rows = {label: means(r) for label, r in res.items()}
    else:
        (label,) = res
        if several:
            print(f"{name}: {n_pairs} pair(s), {label}")
        mean = means(res[label])
        rows = ({} if args.quiet else dict(res[label])) | {"mean": mean}
    print(format_table({**rows, **paper}, names, first="fusion" if table_mode else "image"))
    if path is not None and table_mode:
        print(f"fusion path of every guided row: {path} ({evaluation.PATHS[path]})")
    if paper:
        print("rows 'paper: ...' are the published means (not recomputed; a dash: not reported); with protocol "
              "'paper', MI, VIF and SSIM sum the scores against both sources (0-2)")


def _report(args, done, fusions, names, device, path) -> None:
    """``--report DIR``: the results page of this evaluation (see :mod:`hfkernels.evaluation.report`), one
    section per set."""
    if not args.report:
        return
    from ..evaluation.report import ReportSet, history_of, paper_dataset, write_report

    history, baseline = history_of(args.checkpoint) if args.checkpoint else (None, None)
    note = f"Every guided row takes the fusion path {path}: {evaluation.PATHS[path]}." if path else ""
    sets = [ReportSet(name, pairs, fusions, res, list(names), paper_key=paper_dataset(vis, ir, name),
                      note=note, pictures=pictures)
            for name, vis, ir, pairs, res, pictures in done]
    title = done[0][0] if len(done) == 1 else ", ".join(name for name, *_ in done)
    page = write_report(
        args.report, sets, title=f"hfkernels eval: {title}", protocol=args.protocol, history=history,
        baseline=baseline, limit=args.report_limit, overwrite=args.overwrite, device=device,
        meta=[f"{len(pairs)} pair(s): {vis} + {ir}" for _, vis, ir, pairs, _, _ in done], progress=not args.quiet)
    print(f"report: {page}")


#: options of ``eval`` that name a file it writes (another module may add to it)
OUTPUT_OPTIONS = ["json", "csv"]


def check_eval_outputs(args, jobs, *folders) -> None:
    """Refuse, before any evaluation, outputs that are inputs or exist (without --overwrite);
    ``folders``: the input folders (or files; None entries are skipped)."""
    from ..io import check_outputs
    from .fuse import checkpoint_files

    outputs = [(f"--{o}", getattr(args, o)) for o in OUTPUT_OPTIONS if getattr(args, o, None)]
    inputs = [*folders, *(p for job in jobs for p in job[1:])]
    if args.checkpoint:
        inputs += checkpoint_files(args.checkpoint)
    if getattr(args, "report", None):
        from ..evaluation.report import ASSETS

        outputs += [("--report", Path(args.report) / "index.html")]
        # the page's picture folder is replaced as a whole: it must not hold an input either
        assets = (Path(args.report) / ASSETS).resolve()
        inside = [p for p in inputs if p is not None and assets in (Path(p).resolve(), *Path(p).resolve().parents)]
        if inside:
            raise CLIError(f"--report {args.report}: its folder {ASSETS}/ holds the input {inside[0]}; "
                           "choose another report folder")
    check_outputs(outputs, inputs, overwrite=args.overwrite)


def _video(args, names, device) -> bool:
    """Video files, or frame folders with --video: per-frame metrics and flicker
    (:mod:`hfkernels.video.cli`); False when the arguments are not about videos."""
    from .. import guidance as G
    from ..video import cli as video_cli

    if not video_cli.wanted(args):
        return False
    if args.data or args.baselines:
        raise CLIError("--data and --baselines are for image pairs; give --vis/--ir clips")
    if sum(bool(x) for x in (args.fused, args.method, args.checkpoint)) != 1:
        raise CLIError("for videos give one of --fused, --method, --checkpoint")
    mu_fn = None
    if args.checkpoint:
        mu_fn = G.resolve(checkpoint=args.checkpoint, device=device)
    elif args.method:
        spec = args.method.strip()
        try:
            mu_fn = G.default_guidance(device) if spec == "guide" else G.resolve(G.parse(spec, "--method"))
        except ValueError:
            raise CLIError(f"for videos --method takes heuristic, guide or a constant in [0, 1], got {spec!r}") from None
    check_eval_outputs(args, [], Path(args.vis), Path(args.ir), Path(args.fused) if args.fused else None)
    source = (f"fused {args.fused}" if args.fused else f"checkpoint {args.checkpoint}" if args.checkpoint
              else f"method {args.method}")
    rows, mean, all_names = video_cli.run_eval(args, names, mu_fn, device, label=source)
    print(format_table({"mean": mean} if args.quiet else {**rows, "mean": mean}, all_names, first="frame"))
    if args.json:
        dump_json(args.json, {"protocol": args.protocol, "source": source, "metrics": list(all_names),
                              "per_image": rows, "mean": mean})
    if args.csv:
        _dump_csv(args.csv, ["image", *all_names],
                  [[k, *(repr(r[m]) for m in all_names)] for k, r in {**rows, "mean": mean}.items()])
    return True
