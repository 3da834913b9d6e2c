"""The results page (``hfkernels eval --report``, ``RUN/report/`` of a training run): its tables,
numbers, picture files and refusals, checked from the written HTML."""
import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from hfkernels.cli import main
from hfkernels.evaluation.report import paper_dataset, shown_indices
from hfkernels.evaluation.report.images import crop_geometry, differ_most
from hfkernels.evaluation.report.plots import nice_ticks, quantile
from hfkernels.metrics import HIGHER_IS_BETTER

METRICS = ["EN", "Qabf", "SD", "MSE"]  # fast ones, and one where lower is better


def data_links(data: dict) -> list[str]:
    """The src/href of every picture the page's script lays out from a set's data: a thumbnail
    (src) opening its full-size file (href), a crop (src) opening itself (href)."""
    base, links = data["base"], []
    for _, _, pics in data["rows"]:
        if not pics:
            continue
        for pic in [pics["v"], pics["i"], *pics["f"], *(m for m in pics["m"] if m)]:
            links += [base + pic[0], base + pic[1]]
        for crop in [pics["cv"], pics["ci"], *pics["c"]]:
            links += [base + crop] * 2
    return links


class Page(HTMLParser):
    """The parts of the page the tests look at: tables (header and body rows, cells with their
    attributes and text, rows grouped by tbody), every src/href (with those of the per-image
    rows, laid out from the sets' data), the sets' data, and the number of SVG plots."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self.links, self.svgs, self.data = [], [], 0, []
        self._table = self._cell = self._json = None
        self._in_body = False
        self.feed(text)
        for d in self.data:
            self.links += data_links(d)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [a[k] for k in ("src", "href") if k in a]
        t = self._table
        if tag == "script" and a.get("type") == "application/json":
            self._json = ""
        elif tag == "svg":
            self.svgs += 1
        elif tag == "table":
            self._table = {"attrs": a, "rows": [], "bodies": []}
            self.tables.append(self._table)
        elif tag == "tbody" and t is not None:
            t["bodies"].append({"attrs": a, "rows": [], "text": ""})
            self._in_body = True
        elif tag == "tr" and t is not None:
            row = {"attrs": a, "cells": []}
            t["rows"].append(row)
            if self._in_body:
                t["bodies"][-1]["rows"].append(row)
        elif tag in ("td", "th") and t is not None:
            self._cell = {"attrs": a, "text": ""}
            t["rows"][-1]["cells"].append(self._cell)

    def handle_endtag(self, tag):
        if tag == "script" and self._json is not None:
            self.data.append(json.loads(self._json))
            self._json = None
        elif tag == "table":
            self._table = None
        elif tag == "tbody":
            self._in_body = False
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._json is not None:
            self._json += data
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_body and self._table is not None:
            self._table["bodies"][-1]["text"] += data


def table(page: Page, cls: str):
    found = [t for t in page.tables if cls in t["attrs"].get("class", "").split()]
    assert found, f"no table.{cls} on the page"
    return found


def make_set(root: Path, n: int, size=(48, 64), seed=0) -> Path:
    from hfkernels.training.synthetic import write_pairs

    return write_pairs(root, n=n, size=size, seed=seed)


@pytest.fixture
def ckpt_run(tmp_path):
    from hfkernels.guidance.checkpoint import save_checkpoint
    from hfkernels.guidance.models import GuidanceUNet

    torch.manual_seed(0)
    run = tmp_path / "run"
    save_checkpoint(run, GuidanceUNet(preset="tiny"), None, epoch=1)
    (run / "history.json").write_text(json.dumps([
        {"epoch": 1, "train_loss": 1.5, "eval": {"MSRS-test": {"EN": 6.0, "Qabf": 0.4}}},
        {"epoch": 2, "train_loss": 1.2, "eval": {"MSRS-test": {"EN": 6.3, "Qabf": 0.5}}}]))
    (run / "baseline.json").write_text(json.dumps({"heuristic": {"MSRS-test": {"EN": 6.2, "Qabf": 0.6}}}))
    return run


def check_links(out: Path, page: Page) -> int:
    """Every src/href is a relative path to a file in the report folder (or a #fragment)."""
    files = 0
    for link in page.links:
        if link.startswith("#"):
            continue
        assert "://" not in link and not link.startswith("/"), f"not a local relative link: {link}"
        p = (out / link).resolve()
        assert p.is_file(), f"link to a missing file: {link}"
        assert out.resolve() in p.parents
        files += 1
    return files


def test_eval_report_synthetic(tmp_path, ckpt_run, capsys):
    data = make_set(tmp_path / "MSRS" / "test", 5)
    out, js = tmp_path / "rep", tmp_path / "m.json"
    args = ["eval", "--vis", str(data / "vi"), "--ir", str(data / "ir"), "--checkpoint", str(ckpt_run),
            "--method", "heuristic,vis", "--metrics", ",".join(METRICS), "--json", str(js), "--device", "cpu",
            "--report", str(out), "--report-limit", "3", "--quiet"]
    assert main(args) == 0
    res = json.loads(js.read_text())
    labels = list(res["mean"])
    assert labels == ["checkpoint run", "heuristic guidance", "visible as fused"]
    text = (out / "index.html").read_text()
    page = Page(text)

    # means table: one row per fusion with the JSON's means, the best per column marked, then
    # the paper's MSRS rows (the folder is named MSRS, protocol paper)
    (means,) = table(page, "means")
    head = [c["text"].split()[0] for c in means["rows"][0]["cells"]]
    assert head == ["fusion", *METRICS]
    body = means["rows"][1:]
    ours = [r for r in body if "paper" not in r["attrs"].get("class", "")]
    paper = [r for r in body if "paper" in r["attrs"].get("class", "")]
    assert [r["cells"][0]["text"] for r in ours] == labels
    assert len(paper) == 3 and paper[0]["cells"][0]["text"].startswith("paper:")
    for j, m in enumerate(METRICS, 1):
        vals = {lab: res["mean"][lab][m] for lab in labels}
        best = (max if HIGHER_IS_BETTER[m] else min)(vals.values())
        for r in ours:
            lab, cell = r["cells"][0]["text"], r["cells"][j]
            assert float(cell["text"]) == pytest.approx(vals[lab], abs=1.5e-4 * max(1, abs(vals[lab])))
            assert ("best" in cell["attrs"].get("class", "")) == (vals[lab] == best), (m, lab)

    # per-image table (laid out by the page's script from the set's data): every pair, in
    # dataset order, one row per fusion with the JSON's values; pictures for the 3 pairs the
    # limit picks
    assert len(table(page, "pairs")) == 1
    (data,) = page.data
    assert data["fusions"] == labels and data["metrics"] == METRICS
    assert data["hib"] == [int(HIGHER_IS_BETTER[m]) for m in METRICS]
    names = [name for name, _, _ in data["rows"]]
    assert names == sorted(res["per_image"][labels[0]]) and len(names) == 5
    for name, values, _ in data["rows"]:
        assert len(values) == len(labels)
        for lab, row in zip(labels, values):
            assert dict(zip(METRICS, row)) == pytest.approx(res["per_image"][lab][name], rel=1e-12)
    pictured = [name for name, _, pics in data["rows"] if pics]
    assert pictured == [names[i] for i in shown_indices(5, 3)] == [names[0], names[1], names[3]]
    assert "pictures not shown" in text

    # distributions: one plot per metric, plus the run's curves (loss + 2 metrics)
    assert page.svgs == len(METRICS) + 3
    assert 'id="training"' in text and "heuristic" in text
    # every picture link is a file in the folder; each picture is linked twice (thumbnail or
    # crop as <img>, full size as <a>): per pictured pair vis, ir and their crops, then per
    # fusion fused and its crop, and mu for the two guided fusions (not for "visible as fused")
    per_pair = 2 * 4 + 2 * 2 * len(labels) + 2 * 2
    assert check_links(out, page) == 3 * per_pair
    # "visible as fused" shows the visible image's own files rather than a copy of them
    first = out / "index_files" / "msrs-test" / "00000"
    want = {f"{stem}{ext}" for stem in ("vis", "ir", "f0", "f0.mu", "f1", "f1.mu") for ext in (".jpg", ".t.jpg")}
    want |= {"vis.zoom.png", "ir.zoom.png", "f0.zoom.png", "f1.zoom.png"}
    assert {p.name for p in first.iterdir()} == want
    assert "report:" in capsys.readouterr().out


def test_report_refuses_to_overwrite(tmp_path, capsys):
    data = make_set(tmp_path / "set", 2)
    out = tmp_path / "rep"
    args = ["eval", "--data", str(data), "--method", "laplacian", "--metrics", "EN", "--device", "cpu",
            "--report", str(out), "--quiet"]
    assert main(args) == 0
    stale = out / "index_files" / "stale.txt"
    stale.write_text("x")
    before = (out / "index.html").read_text()
    assert main(args) == 2
    assert "index.html" in capsys.readouterr().err and (out / "index.html").read_text() == before
    assert main(args + ["--overwrite"]) == 0
    assert not stale.exists() and (out / "index.html").is_file()
    # a report folder inside an input folder is refused before anything is computed
    assert main(args[:-3] + ["--report", str(data / "vi" / "rep"), "--quiet"]) == 2
    assert "input" in capsys.readouterr().err and not (data / "vi" / "rep").exists()
    assert main(["eval", "--data", str(data), "--method", "vis", "--report-limit", "2"]) == 2
    assert "--report" in capsys.readouterr().err


def test_paper_rows_only_for_their_datasets_and_protocol(tmp_path):
    assert paper_dataset("/d/MSRS/test/vi") == "MSRS"
    assert paper_dataset("/d/MSRS/train/vi") is None
    assert paper_dataset("/x/Harvard/CT-MRI/CT") == "CT-MRI"
    assert paper_dataset("Harvard/SPECT-MRI") == "SPECT-MRI"
    assert paper_dataset("/d/RoadScene/vi") == "RoadScene"
    assert paper_dataset("/d/TNO/vi") is None
    data = make_set(tmp_path / "RoadScene", 2)
    for protocol, want in (("paper", True), ("standard", False)):
        out = tmp_path / protocol
        assert main(["eval", "--data", str(data), "--method", "blend", "--metrics", "EN", "--device", "cpu",
                     "--protocol", protocol, "--report", str(out), "--quiet"]) == 0
        assert ("paper: 2 epochs on MSRS, zero-shot" in (out / "index.html").read_text()) == want


def test_crop_goes_where_fusions_differ():
    a = torch.rand(1, 3, 80, 120)
    b = a.clone()
    b[..., 50:70, 10:30] = 1 - b[..., 50:70, 10:30]
    side, zoom = crop_geometry(80, 120)
    assert side == 16 and zoom == 6
    y, x = differ_most([a, b], side)
    # the chosen window lies inside the changed block (give or take the 2-pixel reach of the
    # 5x5 detail filter the comparison uses)
    assert 48 <= y and y + side <= 72 and 8 <= x and x + side <= 32
    with pytest.raises(ValueError, match="at least 2"):
        differ_most([a], side)


def test_crop_prefers_structure_to_a_blown_out_lamp():
    """One fusion has a blown-out lamp where the other is merely bright (a large but flat
    difference); elsewhere they differ in fine texture: the crop goes to the texture."""
    g = torch.Generator().manual_seed(0)
    base = 0.3 + 0.05 * torch.rand(1, 1, 96, 128, generator=g)
    a, b = base.clone(), base.clone()
    a[..., 10:40, 10:40], b[..., 10:40, 10:40] = 1.0, 0.7  # the lamp
    texture = 0.2 * torch.rand(1, 1, 20, 20, generator=g)
    b[..., 60:80, 90:110] += texture  # detail one fusion keeps and the other does not
    side, _ = crop_geometry(96, 128)
    y, x = differ_most([a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)], side)
    assert 60 - side < y < 80 and 90 - side < x < 110, (y, x)


def test_training_block_tables_then_curves_and_distinct_ticks():
    from hfkernels.evaluation.report.page import training_block
    from hfkernels.evaluation.report.plots import tick_labels

    assert tick_labels([0.6405, 0.641, 0.6415]) == ["0.6405", "0.6410", "0.6415"]
    assert tick_labels([0.25, 0.5, 0.75]) == ["0.25", "0.5", "0.75"]
    name = "Harvard/CT-MRI+Harvard/PET-MRI+Harvard/SPECT-MRI"
    hist = [{"epoch": 1, "train_loss": 1.3, "eval": {name: {"VIF": 0.641, "Qabf": 0.6}},
             "eval_pairs": {name: ["a", "b"]}}]
    one = training_block(hist, {"heuristic": {name: {"VIF": 0.6411, "Qabf": 0.6}}})
    assert "<svg" not in one and "(2 pairs)" in one and "0.6411" in one  # one epoch: a table, no 1-point plots
    two = training_block(hist + [dict(hist[0], epoch=2, train_loss=1.2)], None)
    assert two.count("<svg") == 3 and '<text x="8" y="15" class="pt">VIF</text>' in two  # the metric first, whole


def test_helpers():
    assert shown_indices(10, None) == list(range(10))
    assert shown_indices(10, 4) == [0, 2, 5, 7]
    assert shown_indices(3, 0) == []
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert nice_ticks(0.13, 0.97) == [0.25, 0.5, 0.75]  # round steps (1, 2, 2.5, 5 x 10^k) inside the range
    assert nice_ticks(3.0, 11.0) == [4, 6, 8, 10]
    assert nice_ticks(2.0, 2.0) == [2.0] and nice_ticks(math.nan, 1.0) == []


def test_eval_report_real_pairs(data_dir, tmp_path):
    src = data_dir / "RoadScene"
    if not src.is_dir():
        pytest.skip(f"no RoadScene set in {data_dir}")
    # three real pairs, linked (never copied) into a folder named like the set
    names = sorted(p.name for p in (src / "vi").iterdir())[:3]
    root = tmp_path / "RoadScene"
    for sub in ("vi", "ir"):
        (root / sub).mkdir(parents=True)
        for n in names:
            os.symlink(src / sub / n, root / sub / n)
    out = tmp_path / "rep"
    assert main(["eval", "--data", str(root), "--baselines", "--metrics", "EN,SD,Qabf", "--device", "cpu",
                 "--report", str(out), "--quiet"]) == 0
    page = Page((out / "index.html").read_text())
    (means,) = table(page, "means")
    rows = [r["cells"][0]["text"] for r in means["rows"][1:]]
    assert rows[:5] == ["visible as fused", "infrared as fused", "heuristic guidance",
                        "heuristic per-pixel blend", "mu = 0.5"]
    assert any(r.startswith("paper:") for r in rows)
    (data,) = page.data
    assert [name for name, _, _ in data["rows"]] == names
    assert check_links(out, page) > 0
    # thumbnails are small files: downscaled to the page's height, not the full image
    from PIL import Image

    from hfkernels.evaluation.report.images import THUMB_HEIGHT

    thumbs = list(out.rglob("*.t.jpg"))
    assert thumbs and all(Image.open(t).size[1] <= THUMB_HEIGHT for t in thumbs)


def test_train_writes_report(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--batch-size", "4", "--synthetic-pairs", "4",
                 "--synthetic-size", "32x48", "--epochs", "2", "--metrics", "EN,Qabf", "--sheet-pairs", "1",
                 "--bn-batches", "1", "--no-progress", "--out", str(run), "--report-limit", "2"]) == 0
    text = (run / "report" / "index.html").read_text()
    page = Page(text)
    (means,) = table(page, "means")
    assert [r["cells"][0]["text"] for r in means["rows"][1:]] == ["trained guidance (epoch 2)", "heuristic guidance"]
    (data,) = page.data
    assert len(data["rows"]) == 4  # the synthetic test set: every pair scored, 2 pictured
    assert sum(1 for _, _, pics in data["rows"] if not pics) == 2
    # curves: loss + EN + Qabf of the test set; distributions: EN + Qabf
    assert page.svgs == 3 + 2
    check_links(run / "report", page)
    # --no-report: no page; the run folder with its report counts as the trainer's own on --resume
    run2 = tmp_path / "run2"
    assert main(["train", "--preset", "tiny", "--batch-size", "4", "--synthetic-pairs", "4", "--synthetic-size",
                 "32x48", "--epochs", "1", "--metrics", "EN", "--no-progress", "--out", str(run2),
                 "--no-report"]) == 0
    assert not (run2 / "report").exists()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert "trained guidance (epoch 3)" in (run / "report" / "index.html").read_text()


def _counting(fn, counts: dict, label: str):
    """``fn`` (a fusion) counting in ``counts[label]`` how often a fused image is computed: calls
    of the fusion itself, or of its ``blend`` (how a guided fusion is evaluated)."""
    def tick(f):
        def g(*a):
            counts[label] += 1
            return f(*a)
        return g

    counts[label] = 0
    wrapped = tick(fn)
    if hasattr(fn, "guidance"):
        wrapped.guidance = fn.guidance
    if hasattr(fn, "blend"):
        wrapped.blend = tick(fn.blend)
    return wrapped


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pictures_reuse_the_scored_fusions(tmp_path):
    from hfkernels.evaluation import method, pairs_from_dataset
    from hfkernels.evaluation.report import (
        ReportPictures,
        ReportSet,
        score_pairs,
        write_report,
    )
    from hfkernels.training.synthetic import SyntheticPairs

    pairs = pairs_from_dataset(SyntheticPairs(n=5, size=(40, 56), seed=1))
    specs = {"lap": "laplacian", "blend": "blend", "vis": "vis", "colour": "0.3"}
    pages = {}
    for reuse in (True, False):
        counts: dict = {}
        fusions = {label: _counting(method(spec), counts, label) for label, spec in specs.items()}
        out = tmp_path / f"reuse-{reuse}"
        pics = ReportPictures(out, pairs, fusions, limit=3) if reuse else None
        scores = score_pairs(pairs, fusions, ["EN", "SD"], pictures=pics)
        write_report(out, [ReportSet("set", pairs, fusions, scores, ["EN", "SD"], pictures=pics)], limit=3)
        # each pair fused once per fusion while scoring; without the pictures object the 3
        # shown pairs are fused again for their pictures
        assert counts == {label: 5 + (0 if reuse else 3) for label in specs}, reuse
        pages[reuse] = out
        # the pictures' hidden working folders are gone
        assert sorted(p.name for p in out.iterdir()) == ["index.html", "index_files"]
    # the same pictures and page data either way
    assert _tree(pages[True] / "index_files") == _tree(pages[False] / "index_files")
    data = [Page((pages[r] / "index.html").read_text()).data for r in (True, False)]
    assert data[0] == data[1] and sum(1 for row in data[0][0]["rows"] if row[2]) == 3


def test_report_pictures_refusals_and_cleanup(tmp_path):
    import gc

    from hfkernels.evaluation import method, pairs_from_dataset
    from hfkernels.evaluation.report import (
        ReportPictures,
        ReportSet,
        score_pairs,
        write_report,
    )
    from hfkernels.training.synthetic import SyntheticPairs

    pairs = pairs_from_dataset(SyntheticPairs(n=3, size=(32, 40), seed=2))
    fusions = {"lap": method("laplacian")}
    out = tmp_path / "rep"
    with pytest.raises(ValueError, match="limit"):
        ReportPictures(out, pairs, fusions, limit=-1)
    with pytest.raises(ValueError, match="fusions"):
        ReportPictures(out, pairs, {})
    # an abandoned one leaves nothing behind
    pics = ReportPictures(out, pairs, fusions)
    folder = pics.folder
    assert folder.is_dir() and folder.parent == out
    del pics
    gc.collect()
    assert not folder.exists()
    # pictures made for other pairs, or already used for a page, are refused
    pics = ReportPictures(out, pairs[:2], fusions)
    scores = score_pairs(pairs, fusions, ["EN"])
    with pytest.raises(ValueError, match="pictures of set"):
        write_report(out, [ReportSet("s", pairs, fusions, scores, ["EN"], pictures=pics)])
    pics = ReportPictures(out, pairs, fusions)
    score_pairs(pairs, fusions, ["EN"], pictures=pics)
    write_report(out, [ReportSet("s", pairs, fusions, scores, ["EN"], pictures=pics)])
    with pytest.raises(ValueError, match="used up"):
        write_report(out, [ReportSet("s", pairs, fusions, scores, ["EN"], pictures=pics)], overwrite=True)
    # an existing page without overwrite is refused when the pictures are started
    with pytest.raises(ValueError, match="index.html"):
        ReportPictures(out, pairs, fusions)
