"""How fast a large results page opens: build a page of N pairs quickly, then time it in Chromium.

The page is what ``hfkernels eval --report`` writes for an MSRS-sized set (640x480 pairs, the
five baselines plus a sixth guided fusion standing in for a checkpoint, the six paper metrics),
but only ``--distinct`` pairs are fused and pictured for real: the other pairs' picture folders
are byte copies of those (distinct file names, so the browser caches nothing across rows) and
their metric values are random. Opening cost depends on the page's size and the number of
files, rows and pictures, not on what the pictures show.

    python benchmarks/report_page.py /tmp/page361 --pairs 361            # build only
    python benchmarks/report_page.py /tmp/page361 --pairs 361 --open 5   # build, then open 5 times

Opening, per run in a fresh headless Chromium (its start-up is not counted):
``rendered``/``painted``: the page's own marks, ms from navigation start until its script has
put the first rows into the document / until the frame showing them was painted;
``dcl``/``load``: the navigation timing's DOMContentLoaded and load event ends (ms);
``wall``: seconds from the navigation request to the load event, measured outside the browser.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path


def build(out: Path, pairs: int, distinct: int, size: tuple[int, int], seed: int = 0) -> Path:
    """Write the page of ``pairs`` pairs into ``out`` (replaced); returns index.html's path."""
    import torch

    from hfkernels.evaluation import BASELINES, fused_and_mu, method
    from hfkernels.evaluation.report import ReportPictures, ReportSet, write_report
    from hfkernels.metrics import PAPER_METRICS
    from hfkernels.training.synthetic import SyntheticPairs

    fusions = {"stand-in for a checkpoint (heuristic)": method("heuristic")}
    fusions.update({label: method(spec) for label, spec in BASELINES})
    ds = SyntheticPairs(n=distinct, size=size, seed=seed, name="pair")
    names = [f"{i:05d}.png" for i in range(pairs)]

    class Stub:  # only the pairs never pictured here would be loaded, and there are none
        def __init__(self, name):
            self.name = name

        def load(self):
            raise RuntimeError("every pair of this page is pictured while it is built")

    ps = [Stub(n) for n in names]
    pics = ReportPictures(out, ps, fusions, None, overwrite=True)
    with torch.no_grad():
        for i in range(min(distinct, pairs)):
            vis, ir = (t[None].float() / 255 for t in ds[i])
            pics.add(i, names[i], vis, ir, {label: fused_and_mu(fn, vis, ir) for label, fn in fusions.items()})
    for i in range(distinct, pairs):
        src = i % distinct
        shutil.copytree(pics.folder / f"{src:05d}", pics.folder / f"{i:05d}")
        pics.shown[i] = _renamed(pics.shown[src], f"{src:05d}/", f"{i:05d}/")
    rng = random.Random(seed)
    scores = {label: {n: {m: rng.uniform(0.2, 9.0) for m in PAPER_METRICS} for n in names} for label in fusions}
    return write_report(out, [ReportSet("MSRS-test", ps, fusions, scores, list(PAPER_METRICS), paper_key="MSRS",
                                        pictures=pics)],
                        title=f"report page benchmark: {pairs} pairs", overwrite=True,
                        meta=[f"{pairs} pairs ({distinct} distinct, the others copies), {size[1]}x{size[0]}"])


def _renamed(sp, old: str, new: str):
    import dataclasses

    from hfkernels.evaluation.report.page import Picture

    def r(v):
        if isinstance(v, Picture):
            return Picture(v.full.replace(old, new), v.thumb.replace(old, new), v.width, v.height)
        if isinstance(v, str):
            return v.replace(old, new)
        if isinstance(v, dict):
            return {k: r(x) for k, x in v.items()}
        return v

    return dataclasses.replace(sp, **{f.name: r(getattr(sp, f.name)) for f in dataclasses.fields(sp)})


def open_times(index: Path, runs: int) -> list[dict]:
    """Open ``index`` ``runs`` times, each in a fresh browser; the timings of each run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests/browser.py
    from tests.browser import Browser

    out = []
    for _ in range(runs):
        with Browser() as b:
            wall = b.open(index.resolve().as_uri(), 1280, 1000)
            nav = b.eval("(() => { const n = performance.getEntriesByType('navigation')[0]; "
                         "return [n.domContentLoadedEventEnd, n.loadEventEnd]; })()")
            rendered = float(b.eval("document.documentElement.getAttribute('data-rendered-ms')"))
            # pages written before the painted mark existed give null after 5 s
            painted = b.eval("new Promise(function wait(done, _, t0 = performance.now()) { const v = document"
                             ".documentElement.getAttribute('data-painted-ms'); v || performance.now() - t0 > 5000"
                             " ? done(v && parseFloat(v)) : setTimeout(() => wait(done, _, t0), 5); })")
            rows = b.eval("document.querySelectorAll('table.pairs tbody').length")
        out.append({"rendered_ms": rendered, "painted_ms": painted, "dcl_ms": round(nav[0], 1),
                    "load_ms": round(nav[1], 1), "wall_s": round(wall, 3), "rows_laid_out": rows,
                    "load_avg": os.getloadavg()[0]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the report folder to write (replaced)")
    ap.add_argument("--pairs", type=int, default=361)
    ap.add_argument("--distinct", type=int, default=4, help="pairs fused and pictured for real")
    ap.add_argument("--size", default="480x640", help="HxW of the pairs")
    ap.add_argument("--open", type=int, default=0, metavar="RUNS", help="then open the page RUNS times in Chromium")
    a = ap.parse_args(argv)
    if a.pairs < 1 or a.distinct < 1:
        ap.error("--pairs and --distinct must be >= 1")
    h, w = (int(v) for v in a.size.lower().split("x"))
    t0 = time.perf_counter()
    index = build(a.out, a.pairs, a.distinct, (h, w))
    size = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(json.dumps({"page": str(index), "build_s": round(time.perf_counter() - t0, 2),
                      "html_bytes": index.stat().st_size, "folder_bytes": size, "load_avg": os.getloadavg()[0]}))
    for r in open_times(index, a.open):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
