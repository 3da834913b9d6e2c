"""The video side of ``hfkernels fuse`` and ``hfkernels eval``: options, output checks and runs.

The commands (:mod:`hfkernels.cli.fuse`, :mod:`hfkernels.cli.eval`) call in here when a source
or output is a video file, or ``--video`` makes folders frame sequences; they pass in what they
resolved (device, guidance) so that this package does not depend on the command line's. User
errors are ValueErrors, which the commands print as one ``error:`` line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io import check_output_folder, check_outputs
from .fuser import ALPHA, CUT, MOTION, VideoFuser, check_pair
from .io import CODECS, VIDEO_FORMATS, is_video, open_frames, require_av


def _add_common(g) -> None:
    g.add_argument("--video", action="store_true",
                   help="treat --vis/--ir folders as frame sequences (implied by a video file)")
    g.add_argument("--guide-scale", type=float, default=None, metavar="S",
                   help="compute mu on frames shrunk by S in (0, 1] (default: 1 for a map, 0.5 for a network)")
    g.add_argument("--guide-every", type=int, default=None, metavar="K",
                   help="compute mu every K frames, keep it in between (default: 1 for a map, 2 for a network)")
    g.add_argument("--no-smooth", dest="smooth", action="store_false",
                   help="no moving average of mu over time")
    g.add_argument("--alpha", type=float, default=ALPHA, help=f"moving-average weight of the previous mu (default {ALPHA})")
    g.add_argument("--motion", type=float, default=MOTION,
                   help=f"luma change at which the average lets go of the previous mu (default {MOTION}; 0: no gate)")
    g.add_argument("--cut", type=float, default=CUT,
                   help=f"mean thumbnail change that starts a new scene (default {CUT})")
    g.add_argument("--batch", type=int, default=8, help="frames fused at once (default 8)")
    g.add_argument("--shortest", action="store_true",
                   help="stop at the end of the shorter sequence instead of refusing different lengths")


def add_fuse_options(p: argparse.ArgumentParser) -> None:
    """The options ``hfkernels fuse`` has for videos."""
    g = p.add_argument_group("video (--vis/--ir/--out a video file, or frame folders with --video)")
    _add_common(g)
    g.add_argument("--codec", choices=CODECS, default=None,
                   help="h264 (default) or ffv1 (lossless, .mkv/.avi) for a video --out")
    g.add_argument("--rate", type=float, default=None, help="output frames per second (default: the visible clip's)")


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """The options ``hfkernels eval`` has for videos."""
    g = p.add_argument_group("video (--vis/--ir a video file, or frame folders with --video)")
    _add_common(g)
    g.add_argument("--frame-step", type=int, default=1, metavar="K",
                   help="image metrics on every K-th frame only (flicker: on every frame)")


def wanted(args) -> bool:
    """Whether the arguments ask for the video path."""
    paths = [getattr(args, k, None) for k in ("vis", "ir", "out", "fused")]
    return bool(getattr(args, "video", False)) or any(p is not None and is_video(p) for p in paths)


def _open(path, mode: str, option: str):
    if path is None:
        raise ValueError(f"give {option} (a video file or a frame folder)")
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{option} {p} does not exist")
    if p.is_file() and not is_video(p):
        raise ValueError(f"{option} {p}: not a video file ({', '.join(VIDEO_FORMATS)}) nor a frame folder")
    try:
        return open_frames(p, mode)
    except ImportError as e:
        raise ValueError(str(e)) from None


def fuser_of(args, mu_fn, device) -> VideoFuser:
    """The :class:`VideoFuser` the options ask for, with the guidance the command resolved."""
    return VideoFuser(mu_fn, levels=args.levels, backend=args.backend, device=device, batch=args.batch,
                      scale=args.guide_scale, every=args.guide_every, smooth=args.smooth, alpha=args.alpha,
                      motion=args.motion or None, cut=args.cut, shortest=args.shortest)


def _check_fuse_outputs(args, vis, ir, extra_inputs) -> Path:
    out = Path(args.out)
    inputs = [vis.path, ir.path, *extra_inputs]
    if is_video(out):
        check_outputs([("--out", out)], inputs, overwrite=args.overwrite)
        if args.codec == "ffv1" and out.suffix.lower() not in (".mkv", ".avi"):
            raise ValueError(f"--codec ffv1 needs an .mkv or .avi --out, got {out}")
        return out
    if out.suffix and not out.is_dir():
        raise ValueError(f"--out {out}: not a video file name ({', '.join(VIDEO_FORMATS)}) nor a folder for frames")
    if args.codec:
        raise ValueError("--codec needs a video file --out")
    check_output_folder("--out", out, inputs)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} already holds files; pass --overwrite to replace frames of the same "
                         "names, or choose an empty folder")
    return out


def run_fuse(args, mu_fn, device, extra_inputs=()) -> int:
    """``hfkernels fuse`` on two sequences: write the fused video or frame folder, with a
    progress bar in frames per second. ``extra_inputs``: files outputs may not replace."""
    from tqdm import tqdm

    if getattr(args, "save_mu", False):
        raise ValueError("--save-mu is for image pairs; a video's guidance is not written")
    vis, ir = _open(args.vis, "rgb", "--vis"), _open(args.ir, "gray", "--ir")
    if (is_video(args.out) or vis.names is None or ir.names is None):
        try:
            require_av()
        except ImportError as e:
            raise ValueError(str(e)) from None
    check_pair(vis, ir, shortest=args.shortest)
    out = _check_fuse_outputs(args, vis, ir, extra_inputs)
    fuser = fuser_of(args, mu_fn, device)
    total = min(n for n in (vis.length, ir.length) if n is not None) if (vis.length or ir.length) else None
    with tqdm(total=total, desc="fuse", unit="frame", dynamic_ncols=True) as bar:
        stats = fuser.write(vis, ir, out, rate=args.rate, codec=args.codec, overwrite=args.overwrite,
                            progress=lambda b: bar.update(b.fused.shape[0]))
    print(f"wrote {stats['frames']} fused frame(s) to {out} ({stats['fps']:.1f} fps; guidance {stats['guidance']} "
          f"at scale {stats['scale']:g} every {stats['every']} frame(s), smoothing {'on' if stats['smooth'] else 'off'})")
    return 0


#: frames that get pictures on a clip's ``--report`` page when ``--report-limit`` is not given
REPORT_FRAMES = 8


def _frame_names(seq, count: int) -> list[str]:
    return list(seq.names[:count]) if seq.names else [f"frame {i:06d}" for i in range(count)]


def _report_pictures(args, vis, ir, label: str):
    """``(ReportPictures, frame names)`` for ``--report``, made before any frame is scored (it
    picks the frames to show from the clip's length); ``(None, None)`` without ``--report``."""
    if not getattr(args, "report", None):
        return None, None
    from ..evaluation.report import ReportPictures
    from ..evaluation.scoring import Pair

    lengths = [n for n in (vis.length, ir.length) if n is not None]
    if not lengths:
        raise ValueError(f"--report needs the clips' frame count, which neither {vis.path} nor {ir.path} records; "
                         "re-encode one (e.g. to .mkv) or give frame folders with --video")
    names = _frame_names(vis, min(lengths))

    def never():  # the scoring loop hands every shown frame over; nothing is read twice
        raise ValueError("a clip's frames are read once, while they are scored")

    limit = REPORT_FRAMES if args.report_limit is None else args.report_limit
    pics = ReportPictures(args.report, [Pair(n, never) for n in names], [label], limit, overwrite=args.overwrite)
    return pics, names


def run_eval(args, names, mu_fn, device, label: str = "fused"):
    """``hfkernels eval`` on sequences: ``(rows {frame name: {metric: value}}, mean, names)`` with
    ``"flicker"`` added to the names; frames without image metrics (``--frame-step``) hold NaN.
    ``mu_fn`` is the guidance to fuse with on the fly, or None to score ``--fused``. With
    ``--report DIR`` it also writes the clip's page: the means, every frame's scores, pictures of
    ``--report-limit`` frames spread over the clip (default :data:`REPORT_FRAMES`) and each metric
    over time; ``label`` names the fusion there."""
    import math

    from tqdm import tqdm

    from .scores import FLICKER, _fused_batches, score_batches

    vis, ir = _open(args.vis, "rgb", "--vis"), _open(args.ir, "gray", "--ir")
    check_pair(vis, ir, shortest=args.shortest)
    pics, shown_names = _report_pictures(args, vis, ir, label)
    if mu_fn is None:
        fused = _open(args.fused, "rgb", "--fused")
        batches = _fused_batches(vis, ir, fused, args.batch)
    else:
        batches = fuser_of(args, mu_fn, device).batches(vis, ir)

    def scored(b):
        bar.update(b.fused.shape[0])
        if pics is None:
            return
        for i in range(b.fused.shape[0]):
            k = b.start + i
            if k < len(shown_names) and pics.wants(k):
                mu = None if b.mu is None else b.mu[i:i + 1]
                pics.add(k, shown_names[k], b.vis[i:i + 1], b.ir[i:i + 1], {label: (b.fused[i:i + 1].clamp(0, 1), mu)})

    total = vis.length
    with tqdm(total=total, desc="eval", unit="frame", dynamic_ncols=True, disable=args.quiet) as bar:
        res = score_batches(batches, names, args.protocol, args.frame_step, progress=scored)
    frame_names = _frame_names(vis, res["count"])
    all_names = (*names, FLICKER)
    rows = {frame_names[i]: {m: r.get(m, math.nan) for m in all_names} for i, r in sorted(res["frames"].items())}
    if pics is not None:
        _write_clip_report(args, rows, all_names, label, pics, device)
    return rows, res["mean"], all_names


def _write_clip_report(args, rows: dict, all_names, label: str, pics, device) -> None:
    import math

    from ..evaluation.report import ReportSet, write_report
    from ..evaluation.scoring import Pair

    series = {m: [(i, r[m]) for i, r in enumerate(rows.values()) if math.isfinite(r[m])] for m in all_names}
    step = f"; image metrics on every {args.frame_step}th frame" if args.frame_step > 1 else ""
    clip = ReportSet(name=f"{Path(args.vis).name} + {Path(args.ir).name}", pairs=[Pair(n, None) for n in rows],
                     fusions={label: None}, scores={label: rows}, metrics=list(all_names), pictures=pics,
                     note=f"One row per frame; flicker compares a frame with the one before it (none for the "
                          f"first){step}.")
    page = write_report(args.report, [clip], title=f"hfkernels eval: {Path(args.vis).name}", protocol=args.protocol,
                        limit=args.report_limit, overwrite=args.overwrite, device=device, series=series,
                        meta=[f"visible {args.vis}; infrared {args.ir}; {label}"])
    print(f"report: {page}")


__all__ = ["add_fuse_options", "add_eval_options", "wanted", "fuser_of", "run_fuse", "run_eval"]
