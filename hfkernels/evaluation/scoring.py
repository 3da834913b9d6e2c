"""Scoring fusions over a set of image pairs: the one loop behind ``hfkernels eval``, the trainer's
per-epoch evaluation, the results page and the scripts, and the paper's baseline fusions.

- a :class:`Pair` is a named pair whose ``load()`` gives its tensors (:func:`pairs_from_files`,
  :func:`pairs_from_dataset`);
- a *fusion* is ``f(vis, ir) -> fused``, or None for a pair's own fused file. A guided fusion
  (:func:`guided_fusion`, :func:`colour_fusion`, :func:`laplacian_fusion`) also carries ``guidance(vis, ir) -> mu`` and
  ``blend(vis, ir, mu) -> fused``, so its ``mu`` is computed once and can be shown;
  :func:`method` makes the named ones, :data:`BASELINES` lists the paper's baseline rows;
- :func:`score` evaluates every pair under every fusion and can hand the fused images and
  their ``mu`` to a keeper (a results page keeps the ones it shows instead of fusing again).

Example::

    pairs = pairs_from_dataset(PairDataset("data/MSRS", split="test"))
    fusions = {label: method(spec) for label, spec in BASELINES}
    table = {label: means(rows) for label, rows in score(pairs, fusions, "EN,VIF").items()}
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .. import guidance
from ..core import reference as ref
from ..core.fusion import (
    fuse,
    fuse_color,
    heuristic_blend,
    heuristic_guidance,
    with_luma,
)
from ..io import read_image, write_output
from ..metrics import evaluate
from ..metrics.tiled import needed_bytes


@dataclass
class Pair:
    """A named pair. ``load() -> (vis (1,3,H,W), ir (1,1,H,W), fused (1,C,H,W) or None)``, float
    in [0, 1], on the CPU; the third item is the pair's own fused file, if it has one. ``load``
    raises ValueError for a file it cannot read or sizes that disagree."""

    name: str
    load: Callable


def _size(t: torch.Tensor) -> str:
    return f"{t.shape[-1]}x{t.shape[-2]}"


def pairs_from_files(jobs) -> list[Pair]:
    """Pairs from ``(name, vis_path, ir_path, fused_path or None)`` tuples: the visible file is
    decoded as RGB, the infrared file as 8-bit gray, a fused file as stored (the decoding the
    published reference values use)."""

    def loader(vp, ip, fp):
        def load():
            vis, ir = read_image(vp, "rgb")[None], read_image(ip, "gray")[None]
            fused = read_image(fp, "keep")[None] if fp is not None else None
            sizes = [("vis", vp, vis), ("ir", ip, ir)] + ([("fused", fp, fused)] if fp is not None else [])
            if len({tuple(t.shape[-2:]) for _, _, t in sizes}) > 1:
                raise ValueError("sizes disagree: " + ", ".join(f"{k} {p} is {_size(t)}" for k, p, t in sizes))
            return vis, ir, fused
        return load

    return [Pair(str(name), loader(vp, ip, fp)) for name, vp, ip, fp in jobs]


def spread_indices(n: int, limit: int | None) -> list[int]:
    """All of ``range(n)``, or ``limit`` indices spread evenly over it (the first and every
    ``n/limit``-th), so a bounded sample still covers the whole set (every sub-set of a joined one)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    if limit is None or limit >= n:
        return list(range(n))
    return sorted({i * n // limit for i in range(limit)})


def pairs_from_dataset(ds, limit: int | None = None, cache: bool = False, indices=None) -> list[Pair]:
    """The first ``limit`` (None: all) pairs of a dataset whose items are ``(vis uint8 (3,H,W),
    ir uint8 (1,H,W))`` and which has ``names`` (:class:`hfkernels.data.PairDataset`,
    :class:`hfkernels.synthetic.SyntheticPairs`), or the pairs at ``indices``. ``cache``: decode
    every pair now and keep it as uint8, for a set scored many times."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    n = len(ds) if limit is None else min(len(ds), limit)
    if indices is not None:
        indices = [int(i) for i in indices]
        if any(not 0 <= i < len(ds) for i in indices):
            raise ValueError(f"indices must lie in [0, {len(ds)}), got {indices}")

    def loader(i):
        item = ds[i] if cache else None

        def load():
            vis, ir = item if item is not None else ds[i]
            return vis[None].float() / 255, ir[None].float() / 255, None
        return load

    return [Pair(str(ds.names[i]), loader(i)) for i in (range(n) if indices is None else indices)]


# --------------------------------------------------------------------------------------------
# fusions

Fusion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: the fusion paths: how a guided fusion treats colour. Every guided row of one comparison
#: table takes the same path (:func:`check_one_path`), so that a difference between rows is the
#: guidance's, not the colour handling's.
PATHS = {
    "color": "fuse_color: the luma (BT.601 Y) is fused with the infrared, the visible Cb/Cr kept "
             "(the path of hfkernels fuse and of training)",
    "rgb": "each RGB channel is fused with the infrared (the paper's Laplacian baseline)",
}


def guided_fusion(mu_fn: guidance.MuFn, blend: Callable, path: str | None = None) -> Fusion:
    """The fusion ``blend(vis, ir, clamp(mu_fn(vis, ir), 0, 1))``, carrying ``guidance`` (the
    clamped ``mu_fn``), ``blend`` and ``path`` (a :data:`PATHS` key, or None)."""

    def fusion(vis, ir):
        return blend(vis, ir, fusion.guidance(vis, ir))

    fusion.guidance = lambda vis, ir: mu_fn(vis, ir).clamp(0, 1)
    fusion.blend = blend
    fusion.path = path
    return fusion


def colour_fusion(mu_fn: guidance.MuFn, levels: int = 4, backend: str | None = None) -> Fusion:
    """The colour path of ``hfkernels fuse``: :func:`hfkernels.fuse_color` (fuse the luma, keep
    the visible chroma) with the guidance ``mu_fn``; (1, 3, H, W) in [0, 1]. A network that fuses
    directly (``mu_fn.fuses``: guide kind ``direct``) gives the fused luma itself, which replaces
    the visible luma (:func:`hfkernels.core.fusion.with_luma`)."""
    if getattr(mu_fn, "fuses", False):
        return guided_fusion(mu_fn, lambda vis, ir, y: with_luma(vis, y))
    return guided_fusion(mu_fn, lambda vis, ir, mu: fuse_color(vis, ir, mu, levels, backend=backend), "color")


def laplacian_fusion(mu_fn: guidance.MuFn, levels: int = 4, backend: str | None = None) -> Fusion:
    """The paper's Laplacian baseline: :func:`hfkernels.fuse` on all three RGB channels with the
    guidance ``mu_fn``, clamped to [0, 1]."""
    return guided_fusion(mu_fn, lambda vis, ir, mu: fuse(vis, ir, mu, levels, backend=backend).clamp(0, 1), "rgb")


def pyramid(mu_fn: guidance.MuFn, levels: int = 4, backend: str | None = None, path: str = "color") -> Fusion:
    """The pyramid fusion with guidance ``mu_fn`` on ``path``: :func:`colour_fusion` or :func:`laplacian_fusion`."""
    return {"color": colour_fusion, "rgb": laplacian_fusion}[check_path(path)](mu_fn, levels, backend)


def blend_fusion(path: str = "color") -> Fusion:
    """The paper's heuristic per-pixel blend ``(1 - w) vis + w ir`` (no pyramid), clamped; on the
    ``"color"`` path it blends the visible luma and keeps its Cb/Cr, on ``"rgb"`` every channel."""
    check_path(path)

    def fusion(vis, ir):
        if path == "rgb" or vis.shape[1] == 1:
            return heuristic_blend(vis, ir).clamp(0, 1)
        ycc = ref.rgb_to_ycbcr(vis)
        y = heuristic_blend(ycc[:, :1], ref.luma(ir))
        return ref.ycbcr_to_rgb(torch.cat([y, ycc[:, 1:]], dim=1)).clamp(0, 1)

    fusion.guidance = heuristic_guidance  # shown beside it; the blend computes its own weights
    fusion.path = path
    return fusion


def check_path(path) -> str:
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    return path


def paths_of(fusions: dict) -> dict:
    """``{label: path}`` of the fusions that have one (sources and fused files have none)."""
    return {k: f.path for k, f in fusions.items() if getattr(f, "path", None) is not None}


def check_one_path(fusions: dict) -> str | None:
    """The one fusion path of a comparison's rows (None: no guided row); ValueError naming the
    rows when they mix paths."""
    paths = paths_of(fusions)
    if len(set(paths.values())) > 1:
        rows = "; ".join(f"{k!r}: {p}" for k, p in paths.items())
        raise ValueError(f"one table must not mix fusion paths, but its rows use {rows}; "
                         "compare rows of one path (--path color or --path rgb)")
    return next(iter(paths.values()), None)


#: the fusion methods by name (see :func:`method`; constants and ``laplacian:c`` too)
METHODS = ("vis", "ir", "laplacian", "blend", "heuristic", "guide")
#: row label of each named method (the path is the table's, not the row's: see :data:`PATHS`)
LABELS = {"vis": "visible as fused", "ir": "infrared as fused", "laplacian": "Laplacian (RGB), heuristic guidance",
          "blend": "heuristic per-pixel blend", "heuristic": "heuristic guidance",
          "guide": "packaged trained guide"}


def label(spec: str) -> str:
    """The row label of the fusion :func:`method` makes of ``spec``."""
    if spec == "guide" and guidance.SHIPPED_GUIDE not in guidance.packaged_guides():
        return LABELS["heuristic"] + " (no packaged guide installed)"
    if spec in LABELS:
        return LABELS[spec]
    if spec.startswith("laplacian:"):
        return f"Laplacian (RGB), mu = {spec.partition(':')[2]}"
    return f"mu = {spec}"


#: (row label, method) of the paper's baseline rows; :func:`method` builds them on one path
BASELINES = tuple((label(m), m) for m in ("vis", "ir", "heuristic", "blend", "0.5"))


def method(spec: str, levels: int = 4, backend: str | None = None, name: str = "spec",
           path: str = "color") -> Fusion:
    """The fusion named ``spec``, its colour handled by ``path`` (a :data:`PATHS` key):

    - ``"vis"`` / ``"ir"``: the visible / infrared image itself as the fused image (no path);
    - ``"heuristic"`` or a constant ``c`` in [0, 1]: :func:`pyramid` with that guidance;
    - ``"guide"``: :func:`pyramid` with :func:`hfkernels.guidance.default_guidance` (the trained
      guide shipped with the package, or the heuristic where none is installed);
    - ``"blend"``: :func:`blend_fusion`, the paper's heuristic per-pixel blend;
    - ``"laplacian"`` / ``"laplacian:c"``: the paper's Laplacian baseline by its name, i.e. the
      heuristic (or ``mu = c``) always on the ``"rgb"`` path, whatever ``path`` says.

    Raises ValueError for anything else, TypeError for a non-string (messages call it ``name``).
    """
    if not isinstance(spec, str):
        raise TypeError(f"{name} must be a string, got {type(spec).__name__}")
    check_path(path)
    if spec == "vis":
        return lambda vis, ir: vis
    if spec == "ir":
        return lambda vis, ir: ir
    if spec == "blend":
        return blend_fusion(path)
    if spec == "guide":
        return pyramid(guidance.default_guidance(), levels, backend, path)
    if spec == "laplacian" or spec.startswith("laplacian:"):
        return laplacian_fusion(guidance.resolve(guidance.parse(spec.partition(":")[2] or guidance.HEURISTIC, name)), levels, backend)
    if spec != guidance.HEURISTIC:
        try:
            float(spec)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be one of {', '.join(METHODS)}, laplacian:c or a constant c "
                             f"in [0, 1], got {spec!r}") from None
    return pyramid(guidance.resolve(guidance.parse(spec, name)), levels, backend, path)


def fused_and_mu(fusion, vis, ir, own=None, want_mu: bool = True):
    """``(fused, mu or None)`` of one fusion on vis (B,3,H,W), ir (B,1,H,W): a guided fusion's
    ``mu`` is computed once and blended; ``fusion=None`` takes ``own`` (the pair's fused file).
    ``want_mu=False`` skips a guidance the fusion does not need for its result."""
    if fusion is None:
        if own is None:
            raise ValueError("a fusion given as None needs pairs with their own fused file")
        return own, None
    g, blend = getattr(fusion, "guidance", None), getattr(fusion, "blend", None)
    if g is not None and blend is not None:
        mu = g(vis, ir)
        return blend(vis, ir, mu), mu
    return fusion(vis, ir), (g(vis, ir).clamp(0, 1) if g is not None and want_mu else None)


# --------------------------------------------------------------------------------------------
# the loop


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says an allocation failed (CPU or CUDA): the input is too large for this
    machine, a user error to report with the input's name and the memory it needs."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("can't allocate memory", "not enough memory", "Cannot allocate memory"))


class EvaluationError(ValueError):
    """Pairs that could not be evaluated (unreadable files, sizes that disagree): ``problems``
    holds one line for each, ``total`` is the number of pairs."""

    def __init__(self, problems: list[str], total: int):
        self.problems, self.total = list(problems), total
        super().__init__(f"{len(problems)} of {total} pair(s) could not be evaluated:\n  " + "\n  ".join(problems))


@torch.no_grad()
def score(pairs, fusions: dict, metrics=None, protocol: str = "paper", device="cpu", *,
          keep=None, progress: bool = False, desc: str = "eval", unavailable: str = "raise") -> dict:
    """Score every pair under every fusion.

    Args:
        pairs: :class:`Pair` list.
        fusions: ``{label: fusion or None}`` (None: each pair's own fused file).
        metrics: names for :func:`hfkernels.metrics.evaluate` (None: all); protocol likewise.
        keep: receives the fused images of the pairs it wants instead of them being dropped
            (e.g. :class:`hfkernels.report.ReportPictures`): ``keep.wants(i) -> bool`` for the
            ``i``-th pair, then ``keep.add(i, name, vis, ir, made)`` with ``made = {label:
            (fused (1,C,H,W), mu (1,1,H,W) or None)}`` on ``device``.
        progress: a progress bar (for 2 pairs or more).
        unavailable: ``"nan"``: a metric a pair is too small for is NaN (not available) for that
            pair; ``"raise"`` (default): the pair is listed as one that could not be evaluated.
    Returns:
        ``{label: {pair name: {metric: float}}}``, metrics in the order of ``metrics``.
    Raises:
        EvaluationError: after trying every pair, listing each one that could not be evaluated.
    """
    from tqdm import tqdm

    device = torch.device(device)
    out = {label: {} for label in fusions}
    problems = []
    for i, p in enumerate(tqdm(pairs, desc=desc, unit="pair", disable=not progress or len(pairs) < 2)):
        try:
            vis, ir, own = p.load()
        except ValueError as e:
            problems.append(str(e))
            continue
        vis, ir = vis.to(device), ir.to(device)
        own = own.to(device) if own is not None else None
        kept = keep is not None and keep.wants(i)
        made = {}
        for label, fn in fusions.items():
            try:
                fused, mu = fused_and_mu(fn, vis, ir, own, want_mu=kept)
                try:
                    vals = evaluate(vis, ir, fused, metrics, protocol, unavailable)
                except ValueError as e:
                    problems.append(f"{p.name}: {e}")
                    break
            except (RuntimeError, MemoryError) as e:
                # a fusion's own ValueError (a bad argument) is the caller's, not this pair's
                if not out_of_memory(e):
                    raise
                problems.append(f"{p.name}: not enough memory for a {vis.shape[-1]}x{vis.shape[-2]} pair "
                                f"(the metrics need about {needed_bytes(1, *vis.shape[-2:]) / 2**30:.1f} GiB)")
                break
            out[label][p.name] = {k: float(v[0]) for k, v in vals.items()}
            if kept:
                made[label] = (fused, mu)
        else:
            if kept:
                keep.add(i, p.name, vis, ir, made)
    if problems:
        raise EvaluationError(problems, len(pairs))
    return out


def means(rows: dict) -> dict:
    """``{pair: {metric: v}}`` -> ``{metric: mean over pairs}`` (empty for no pairs). A NaN
    value (a metric not available for that pair) is left out; NaN if no pair has the metric."""
    names = next(iter(rows.values())).keys() if rows else []
    out = {}
    for m in names:
        vals = [r[m] for r in rows.values() if not math.isnan(r[m])]
        out[m] = math.fsum(vals) / len(vals) if vals else math.nan
    return out


# --------------------------------------------------------------------------------------------
# output


def format_table(rows: dict, names, first: str = "image") -> str:
    """Fixed-width text table of ``{row label: {metric: value}}`` (a missing or None value: a dash)."""
    w0 = max([len(first)] + [len(k) for k in rows])
    cols = [max(len(m), 9) for m in names]
    lines = [f"{first:<{w0}}  " + "  ".join(f"{m:>{c}}" for m, c in zip(names, cols))]
    for label, r in rows.items():
        # a metric a row does not have (e.g. one the paper did not report) shows as a dash
        lines.append(f"{label:<{w0}}  " + "  ".join(f"{r[m]:>{c}.4f}" if r.get(m) is not None else f"{'—':>{c}}"
                                                    for m, c in zip(names, cols)))
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
    text = json.dumps(json_safe(obj), indent=1, allow_nan=False)
    write_output(path, (text + "\n").encode())


__all__ = ["Pair", "pairs_from_files", "spread_indices", "pairs_from_dataset", "Fusion", "PATHS", "guided_fusion",
           "colour_fusion", "laplacian_fusion", "pyramid", "blend_fusion", "check_path", "paths_of", "check_one_path",
           "method", "METHODS", "LABELS", "label", "BASELINES", "fused_and_mu", "EvaluationError", "score", "means",
           "format_table", "json_safe", "dump_json", "out_of_memory"]
