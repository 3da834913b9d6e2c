"""A results page: one static HTML file with tables, pictures and plots, opened from disk.

``hfkernels eval ... --report DIR`` and the end of ``hfkernels train`` (``RUN/report/``) call
:func:`write_report`, which writes ``DIR/index.html`` and its pictures under ``DIR/index_files/``.
The page needs no server, network or script library: thumbnails are small files written once,
full-size images and zoomed crops are files beside them, plots are inline SVG, and a few lines of
plain JavaScript sort the per-image table (also from the URL: ``index.html?sort=VIF&fusion=NAME``,
``&dir=asc|desc``).

Building blocks:

- :class:`ReportPair`: a named pair with a ``load()`` giving its tensors;
  :func:`pairs_from_jobs` / :func:`pairs_from_dataset` make them from files or a dataset;
- a *fusion* is ``f(vis, ir) -> fused``, or None for a pair's own fused file. It may carry
  ``guidance(vis, ir) -> mu`` (shown as the ``mu`` picture) and ``blend(vis, ir, mu) -> fused``
  (then the pictures use ``blend`` with that ``mu`` rather than computing the guidance twice);
- :func:`score_pairs` computes the per-image metrics that :func:`write_report` tabulates;
- :class:`ReportPictures` takes the fused images (and ``mu``) of the shown pairs while they are
  scored (the ``keep`` of :func:`hfkernels.evaluation.score`), so that no fusion
  is computed twice; without it :func:`write_report` fuses the shown pairs again for their pictures.
"""
from __future__ import annotations

import datetime
import os
import re
import secrets
import shutil
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ...core.fusion import heuristic_guidance
from ..scoring import (
    Pair,
    colour_fusion,
    fused_and_mu,
    pairs_from_dataset,
    pairs_from_files,
    score,
    spread_indices,
)
from .images import crop_geometry, differ_most, save_crop, save_full_and_thumb
from .page import Picture, SectionView, ShownPair, render
from .paper import PAPER_ROWS, paper_dataset

#: the folder beside index.html that holds every picture (replaced as a whole on overwrite)
ASSETS = "index_files"


#: a named pair (``load() -> (vis, ir, own fused or None)``); the scoring loop's own type
ReportPair = Pair
#: pairs from ``(name, vis_path, ir_path, fused_path or None)`` tuples
pairs_from_jobs = pairs_from_files


@dataclass
class ReportSet:
    """One pair set of the page: its pairs, fusions and per-image scores.

    Attributes:
        name: shown as the section title.
        pairs: every pair (scores must cover each of them).
        fusions: ``{label: f(vis, ir) -> fused, or None}`` in the order of the page's rows.
        scores: ``{label: {pair name: {metric: value}}}``.
        metrics: metric names, in column order.
        paper_key: a :data:`PAPER_ROWS` key whose published rows go beside ours (None: none).
        note: one more sentence under the means table.
        pictures: the set's pictures written while it was scored (:class:`ReportPictures`);
            None: :func:`write_report` fuses the shown pairs again for them.
    """

    name: str
    pairs: list
    fusions: dict
    scores: dict
    metrics: list
    paper_key: str | None = None
    note: str = ""
    pictures: "ReportPictures | None" = None


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")


class ReportPictures:
    """The pictures of one pair set, written while the set is scored, so no fusion runs twice.

    Give it to the scoring loop as ``hfkernels.evaluation.score(..., keep=pics)``: for each pair
    the page shows (:meth:`wants`) the loop hands over that pair's fused images and ``mu`` maps
    (:meth:`add`), which writes the files at once and keeps only their names, so memory holds
    one pair at a time whatever the set's size. Then pass it on as ``ReportSet(...,
    pictures=pics)``; :func:`write_report` fuses only the shown pairs it was not given.

    Args:
        out_dir: the report folder, checked as :func:`write_report` checks it (ValueError when
            it holds a page and ``overwrite`` is False); the files wait in a hidden folder inside
            it until the page is written (removed if it never is).
        pairs: the set's pairs (anything with a ``name``), in the set's order.
        fusions: the set's fusion labels (or its ``{label: fusion}``).
        limit: at most this many pairs get pictures (None: all), picked by :func:`shown_indices`.
        overwrite: as for :func:`write_report`.
    """

    def __init__(self, out_dir, pairs, fusions, limit: int | None = None, overwrite: bool = False):
        _check_limit(limit)
        out_dir = Path(out_dir)
        _check_out(out_dir, overwrite)
        self.names = [str(p.name) for p in pairs]
        self.labels = list(fusions)
        if not self.labels:
            raise ValueError("fusions must name at least one fusion")
        self.indices = frozenset(shown_indices(len(self.names), limit))
        #: {pair index: ShownPair with paths relative to the set's folder}
        self.shown: dict = {}
        #: seconds spent writing pictures (the page reports its whole build time)
        self.seconds = 0.0
        out_dir.mkdir(parents=True, exist_ok=True)
        self.folder: Path | None = _hidden_folder(out_dir, ".pictures-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def wants(self, i: int) -> bool:
        """Whether the page shows the ``i``-th pair (so its fusions and ``mu`` are worth keeping)."""
        return i in self.indices

    @torch.no_grad()
    def add(self, i: int, name: str, vis: torch.Tensor, ir: torch.Tensor, made: dict) -> bool:
        """Write the pictures of the ``i``-th pair if the page shows it; returns whether it did.

        Args:
            name: the pair's name (checked against the set's ``i``-th).
            vis: (1, 3, H, W), ir: (1, 1, H, W), floats in [0, 1], any device.
            made: ``{fusion label: (fused (1, C, H, W), mu (1, 1, H, W) or None)}`` for every
                fusion of the set, as :func:`hfkernels.evaluation.fused_and_mu` gives them.
        """
        if self.folder is None:
            raise ValueError("these pictures were already used for a page; make a new ReportPictures")
        if not 0 <= i < len(self.names) or self.names[i] != str(name):
            raise ValueError(f"pair {i} named {name!r} is not the set's pair {i}")
        if i not in self.indices:
            return False
        missing = [k for k in self.labels if k not in made]
        if missing:
            raise ValueError(f"made lacks the fusion(s) {missing} of pair {name!r}")
        t0 = time.perf_counter()
        cpu = {k: (made[k][0].float().cpu(), made[k][1].float().cpu() if made[k][1] is not None else None)
               for k in self.labels}
        rel = f"{i:05d}"
        self.shown[i] = _write_pair(self.folder / rel, rel, vis.float().cpu(), ir.float().cpu(), cpu)
        self.seconds += time.perf_counter() - t0
        return True

    def _take(self, dest: Path) -> dict:
        """Move the files to ``dest``; the {pair name: ShownPair} of the pairs written."""
        os.replace(self.folder, dest)
        self._cleanup.detach()
        self.folder = None
        return {self.names[i]: sp for i, sp in sorted(self.shown.items())}


def score_pairs(pairs, fusions: dict, metrics=None, protocol: str = "paper", device="cpu",
                progress: bool = False, pictures: ReportPictures | None = None, unavailable: str = "raise") -> dict:
    """``{label: {pair name: {metric: value}}}`` for every pair under every fusion
    (:func:`hfkernels.evaluation.score`, ``unavailable`` as there); ``pictures``: gets the fusions
    of the pairs it shows as they are scored (see :class:`ReportPictures`)."""
    return score(pairs, fusions, metrics, protocol, device, keep=pictures, progress=progress, desc="report metrics",
                 unavailable=unavailable)


def shown_indices(n: int, limit: int | None) -> list[int]:
    """The pairs that get pictures: all, or ``limit`` of them spread evenly over the set (first
    and every ``n/limit``-th), so a bounded page still samples the whole set."""
    return spread_indices(n, limit)


def _check_out(out_dir: Path, overwrite: bool) -> None:
    """Refuse, before any work, a report folder whose page or picture folder (whatever it is: a
    folder, a file, a link) would be replaced without ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"report folder {out_dir} exists and is not a folder")
    for name in ("index.html", ASSETS):
        if os.path.lexists(out_dir / name) and not overwrite:
            raise ValueError(f"report folder {out_dir} already holds {name}; pass --overwrite "
                             f"(overwrite=True) to replace it, or choose another folder")


def _replace_assets(staging: Path, assets: Path) -> None:
    """Put the new picture folder in place of the old one; a link there is replaced, never
    followed (what it points at is not the page's)."""
    if assets.is_symlink() or (assets.exists() and not assets.is_dir()):
        assets.unlink()
    elif assets.exists():
        shutil.rmtree(assets)
    os.replace(staging, assets)


def _slug(text: str, taken: set) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "set"
    base, k = s, 2
    while s in taken:
        s, k = f"{base}-{k}", k + 1
    taken.add(s)
    return s


def _write_pair(folder: Path, rel: str, vis: torch.Tensor, ir: torch.Tensor, made: dict) -> ShownPair:
    """Write the pictures of one pair (full size, thumbnails, crops) and describe them.

    vis (1,3,H,W), ir (1,1,H,W) and made ``{label: (fused (1,C,H,W), mu (1,1,H,W) or None)}``,
    on the CPU; paths in the result start with ``rel``, the folder's name relative to the set's."""
    h, w = vis.shape[-2:]
    side, zoom = crop_geometry(h, w)
    # compare the real fusions; one that merely returns a source would make the sources'
    # difference, not the fusions', pick the crop
    fused_list = [f for f, _ in made.values()]
    real = [f for f in fused_list if not (_same(f, vis) or _same(f, ir))]
    group = real if len(real) >= 2 else fused_list if len(fused_list) >= 2 else [vis, ir] + fused_list
    y, x = differ_most(group, side)
    side = min(side, h, w)

    def pic(t, stem):
        tw, th = save_full_and_thumb(t, folder / f"{stem}.jpg", folder / f"{stem}.t.jpg")
        return Picture(f"{rel}/{stem}.jpg", f"{rel}/{stem}.t.jpg", tw, th)

    def crop(t, stem):
        save_crop(t, y, x, side, zoom, folder / f"{stem}.png")
        return f"{rel}/{stem}.png"

    sp = ShownPair(size=(h, w), vis=pic(vis, "vis"), ir=pic(ir, "ir"), box=(y, x, side), zoom=zoom,
                   crop_vis=crop(vis, "vis.zoom"), crop_ir=crop(ir, "ir.zoom"))
    mus: list = []  # (mu, Picture) already written: fusions sharing a guidance share its files
    for j, (label, (fused, mu)) in enumerate(made.items()):
        if mu is not None:
            same = next((p for m, p in mus if _same(m, mu)), None)
            sp.mu[label] = same or pic(mu, f"f{j}.mu")
            mus.append((mu, sp.mu[label]))
        # a source used as the fused image (a baseline row) links to the source's files
        if _same(fused, vis):
            sp.fused[label], sp.crop[label] = sp.vis, sp.crop_vis
        elif _same(fused, ir):
            sp.fused[label], sp.crop[label] = sp.ir, sp.crop_ir
        else:
            sp.fused[label], sp.crop[label] = pic(fused, f"f{j}"), crop(fused, f"f{j}.zoom")
    return sp


def _hidden_folder(out_dir: Path, prefix: str) -> Path:
    """A new uniquely named folder in ``out_dir`` with the permissions of any new folder (0777
    less the umask, like the page beside it; ``mkdtemp`` would make it private)."""
    for _ in range(100):
        folder = out_dir / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir(0o777)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary folder name in {out_dir}")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


@torch.no_grad()
def _fill(pics: ReportPictures, s: ReportSet, device, progress: bool) -> None:
    """Fuse and write the shown pairs of ``s`` that ``pics`` was not given while scoring."""
    from tqdm import tqdm

    d = torch.device(device)
    todo = sorted(pics.indices - pics.shown.keys())
    for i in tqdm(todo, desc=f"report pictures {s.name}", unit="pair", disable=not progress or len(todo) < 2):
        p = s.pairs[i]
        vis, ir, own = p.load()
        own = own.to(d) if own is not None else None
        vis_d, ir_d = vis.to(d), ir.to(d)
        pics.add(i, p.name, vis, ir, {label: fused_and_mu(fn, vis_d, ir_d, own) for label, fn in s.fusions.items()})


def write_report(out_dir, sets: list[ReportSet], *, title: str = "hfkernels results", protocol: str = "paper",
                 history: list | None = None, baseline: dict | None = None, limit: int | None = None,
                 overwrite: bool = False, device="cpu", meta: list[str] | None = None,
                 progress: bool = False, series: dict | None = None) -> Path:
    """Write ``out_dir/index.html`` and its pictures; returns the page's path.

    Args:
        sets: the pair sets, one section each (see :class:`ReportSet`). A set with ``pictures``
            (a :class:`ReportPictures` fed while it was scored) keeps that object's choice of
            pairs; the others are fused again here for their pictures.
        protocol: the metric protocol of the scores; the paper's rows are shown only for "paper".
        history: a training run's per-epoch records (``history.json``), for the training curves.
        baseline: the run's ``baseline.json`` (``{"heuristic": {set: {metric: value}}}``).
        limit: at most this many pairs per set get pictures (None: all); tables and plots still
            cover every pair.
        overwrite: replace an existing page (and its pictures) instead of raising ValueError.
        series: ``{metric: [(frame, value), ...]}``, a clip's metrics over time, as curves.
    """
    from ...metrics import HIGHER_IS_BETTER

    out_dir = Path(out_dir)
    _check_limit(limit)
    if not sets:
        raise ValueError("sets must hold at least one ReportSet")
    for s in sets:
        missing = [(f, p.name) for f in s.fusions for p in s.pairs if p.name not in s.scores.get(f, {})]
        if missing:
            raise ValueError(f"scores of set {s.name!r} miss {len(missing)} (fusion, pair) entries, "
                             f"e.g. {missing[0]}")
        pics = s.pictures
        if pics is not None and (pics.folder is None or pics.names != [str(p.name) for p in s.pairs]
                                 or pics.labels != list(s.fusions)):
            raise ValueError(f"pictures of set {s.name!r} are used up or were made for other pairs")
    _check_out(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the pictures written while scoring count towards the page's build time
    t0 = time.perf_counter() - sum(s.pictures.seconds for s in sets if s.pictures is not None)
    # pictures gather in a hidden folder that replaces index_files/ only once all are written
    staging = _hidden_folder(out_dir, ".index_files-")
    try:
        taken: set = set()
        views = []
        for s in sets:
            anchor = _slug(s.name, taken)
            pics = s.pictures or ReportPictures(out_dir, s.pairs, s.fusions, limit, overwrite=True)
            _fill(pics, s, device, progress)
            shown = pics._take(staging / anchor)
            key = s.paper_key if protocol == "paper" else None
            views.append(SectionView(
                name=s.name, anchor=anchor, fusions=list(s.fusions), metrics=list(s.metrics),
                images=[p.name for p in s.pairs], scores=s.scores, shown=shown,
                higher_is_better={m: HIGHER_IS_BETTER.get(m, True) for m in s.metrics},
                paper=PAPER_ROWS.get(key, []) if key else [], paper_key=key, note=s.note,
                base=f"{ASSETS}/{anchor}/"))
        from ... import __version__

        lines = list(meta or [])
        lines.append(f"protocol {protocol!r}; written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
                     f"hfkernels {__version__} in {time.perf_counter() - t0:.1f} s (pictures and page)")
        html = render(title, lines, views, history, baseline, series)
        _replace_assets(staging, out_dir / ASSETS)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    index = out_dir / "index.html"
    tmp = out_dir / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, index)
    return index


def training_sets(trainer, limit: int | None = None, progress: bool = False, subset: bool = False) -> list[ReportSet]:
    """Score a finished training run on its test sets: its trained guidance and the heuristic
    guidance (both through ``fuse_color``), at the files' native resolution with the published
    protocol, one :class:`ReportSet` per pair set, pictures of up to ``limit`` pairs per set
    written on the way (0: none).

    ``trainer``: a :class:`hfkernels.training.Trainer` after its epochs. At most
    ``trainer.cfg.eval_limit`` pairs per set are scored; ``subset``: only the pairs of its
    per-epoch evaluation. The run's final evaluation calls this once, and :func:`training_report`
    writes the page from its result.
    """
    from ...io.datasets import PairDataset

    cfg = trainer.cfg
    epoch = trainer.history[-1]["epoch"] if trainer.history else 0
    fusions = {f"trained guidance (epoch {epoch})": colour_fusion(trainer.guidance_fn(), cfg.levels, cfg.backend),
               "heuristic guidance": colour_fusion(heuristic_guidance, cfg.levels, cfg.backend)}
    sets = []
    for name, ds in trainer.test_sets:
        # score the files at their own resolution (the published protocol), one section per set
        parts = [(s.name, PairDataset(s, split="test")) for s in ds.sets] if hasattr(ds, "sets") else [(name, ds)]
        wanted = set(trainer.eval_pairs()[name]) if subset else None
        for set_name, part in parts:
            n = min(len(part), cfg.eval_limit) if cfg.eval_limit is not None else len(part)
            idx = range(n)
            if wanted is not None:
                labels = trainer.pair_labels(part, idx) if hasattr(part, "sets") else [part.names[i] for i in idx]
                idx = [i for i, lab in zip(idx, labels) if lab in wanted]
            pairs = pairs_from_dataset(part, indices=list(idx))
            if not pairs:
                continue
            # the shown pairs' pictures are written as they are scored: each fusion runs once
            pics = (ReportPictures(trainer.run_dir / "report", pairs, fusions, limit, overwrite=True)
                    if limit != 0 else None)
            scores = score_pairs(pairs, fusions, cfg.metrics, "paper", trainer.device, progress, pictures=pics,
                                 unavailable="nan")
            src = [set_name] + ([str(s.vis_dir) for s in part.sets] if hasattr(part, "sets") else [])
            sets.append(ReportSet(set_name, pairs, fusions, scores, list(next(iter(scores.values()))[pairs[0].name]),
                                  paper_key=paper_dataset(*src), pictures=pics,
                                  note="" if wanted is None else "The run's per-epoch evaluation subset only "
                                       "(the run skipped its final evaluation of the full test sets)."))
    return sets


def training_report(trainer, limit: int | None = None, progress: bool = False, sets=None) -> Path | None:
    """The page of a finished training run, in ``RUN/report/``: ``sets`` (the
    :func:`training_sets` of its final evaluation; None: score the per-epoch subset now, as a run
    without a final evaluation does), plus the run's per-epoch curves. Returns None without
    test sets."""
    from ...io import read_json

    cfg = trainer.cfg
    if not trainer.test_sets:
        return None
    full = sets is not None
    if sets is None:
        sets = training_sets(trainer, limit, progress=progress, subset=True)
    if not sets:
        return None
    epoch = trainer.history[-1]["epoch"] if trainer.history else 0
    hist = trainer.run_dir / "history.json"
    base = trainer.run_dir / "baseline.json"
    return write_report(
        trainer.run_dir / "report", sets, title=f"hfkernels training run {trainer.run_dir}",
        history=read_json(hist) if hist.is_file() else trainer.history,
        baseline=read_json(base) if base.is_file() else None, limit=limit, overwrite=True,
        device=trainer.device,
        meta=[f"{cfg.preset} U-Net, {epoch} epoch(s); test pairs scored at native resolution"
              + ("" if full else "; only the per-epoch evaluation subset")],
        progress=progress)


def history_of(run) -> tuple[list | None, dict | None]:
    """``(history, baseline)`` read from a training run folder (None for what it lacks).
    Read before any work: a file that is there but not what it should be is a ValueError
    naming it."""
    from ...guidance import checkpoint as ckpt
    from ...io import read_json_file

    run = Path(run)
    if not run.is_dir():
        return None, None
    hist, base = run / "history.json", run / "baseline.json"
    return (ckpt.read_history(hist) if os.path.lexists(hist) else None,
            read_json_file(base, dict, "baseline record") if os.path.lexists(base) else None)


__all__ = ["ReportPair", "ReportSet", "ReportPictures", "pairs_from_jobs", "pairs_from_dataset", "fused_and_mu",
           "score_pairs", "shown_indices", "write_report", "training_sets", "training_report", "history_of", "paper_dataset",
           "PAPER_ROWS", "ASSETS"]
