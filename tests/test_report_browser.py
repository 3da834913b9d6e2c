"""The results page as a person sees it: opened from disk in headless Chromium (driven through
its DevTools protocol), sorted through its URL (``?sort=METRIC&fusion=NAME``) and by clicking a
column, paged with "show more", its pictures loaded, and photographed.

Needs Debian's ``chromium``; where it is missing the set-up installs it (as root, with apt-get),
otherwise the tests skip and say why."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from hfkernels.cli import main
from tests.browser import Browser, find_chromium
from hfkernels.evaluation.report.page import PAGE_PAIRS


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("chromium is not installed, and it cannot be installed here (needs root and apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=900)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=True,
                           capture_output=True, timeout=1800)
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"chromium is not installed and `apt-get install chromium` failed: {e}")
        exe = find_chromium()
        if exe is None:
            pytest.skip("`apt-get install chromium` ran but no chromium executable was found")
    return exe


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from hfkernels.training.synthetic import write_pairs

    root = tmp_path_factory.mktemp("browser")
    data = write_pairs(root / "set", n=6, size=(60, 80), seed=3)
    out, js = root / "rep", root / "m.json"
    assert main(["eval", "--data", str(data), "--method", "heuristic,blend,0.3", "--metrics", "EN,Qabf,SD",
                 "--device", "cpu", "--json", str(js), "--report", str(out), "--quiet"]) == 0
    return out / "index.html", json.loads(js.read_text())


@pytest.fixture(scope="module")
def long_page(tmp_path_factory):
    """A page of more pairs than the table lays out at first, every one pictured."""
    from hfkernels.training.synthetic import write_pairs

    root = tmp_path_factory.mktemp("browser-long")
    n = PAGE_PAIRS + 5
    data = write_pairs(root / "set", n=n, size=(24, 32), seed=5)
    out, js = root / "rep", root / "m.json"
    assert main(["eval", "--data", str(data), "--method", "heuristic,vis", "--metrics", "EN,SD", "--device", "cpu",
                 "--json", str(js), "--report", str(out), "--quiet"]) == 0
    return out / "index.html", json.loads(js.read_text())


def _order(dom: str) -> list[str]:
    start = dom.index('<table class="pairs"')
    table = dom[start:dom.index("</table>", start)]
    return re.findall(r'<tbody data-name="([^"]+)"', table)


def _dom(b: Browser) -> str:
    return b.eval("document.documentElement.outerHTML")


def _names(b: Browser) -> list[str]:
    return b.eval("Array.from(document.querySelectorAll('table.pairs tbody')).map(t => t.dataset.name)")


def test_sorts_from_url(chromium, page):
    index, res = page
    fusion = "heuristic per-pixel blend"
    url = index.resolve().as_uri() + "?sort=Qabf&fusion=" + fusion.replace(" ", "%20")
    with Browser(chromium) as b:
        b.open(url)
        dom = _dom(b)
        assert re.search(r'<table class="pairs"[^>]*data-sort="Qabf"', dom), "the page's script did not sort"
        assert 'data-dir="desc"' in dom  # Qabf: higher is better, so best first
        got = _order(dom)
        vals = res["per_image"][fusion]
        want = sorted(vals, key=lambda n: -vals[n]["Qabf"])
        assert got == want and got != sorted(vals, key=lambda n: vals[n]["Qabf"])
        # ascending on request, and by name
        b.open(url + "&dir=asc")
        assert _order(_dom(b)) == want[::-1]
        b.open(index.resolve().as_uri() + "?sort=image&dir=desc")
        assert _order(_dom(b)) == sorted(vals, reverse=True)


def test_sorts_on_click(chromium, page):
    index, res = page
    labels = list(res["per_image"])
    with Browser(chromium) as b:
        b.open(index.resolve().as_uri())
        assert _names(b) == sorted(res["per_image"][labels[0]])  # dataset order at first
        # choose the second fusion, click "SD": best (highest) first; click again: reversed
        b.eval("(() => { const s = document.querySelector('select.sortf'); s.value = '1';"
               " s.dispatchEvent(new Event('change')); })()")
        click = "document.querySelector('table.pairs th[data-m=\"SD\"] button').click()"
        b.eval(click)
        vals = res["per_image"][labels[1]]
        want = sorted(vals, key=lambda n: -vals[n]["SD"])
        assert _names(b) == want
        # the cell shown for that fusion and metric holds the pair's value
        shown = b.eval("Array.from(document.querySelectorAll('table.pairs tbody tr[data-f=\"1\"] "
                       "td[data-m=\"SD\"]')).map(td => parseFloat(td.textContent))")
        assert shown == pytest.approx([vals[n]["SD"] for n in want], abs=1e-4)
        b.eval(click)
        assert _names(b) == want[::-1]


def _file_of(url: str) -> Path:
    u = urlparse(url)
    assert u.scheme == "file", f"not a file on disk: {url}"
    return Path(unquote(u.path))


def test_rows_after_paging_have_pictures(chromium, long_page):
    index, res = long_page
    names = sorted(res["per_image"][next(iter(res["per_image"]))])
    with Browser(chromium) as b:
        b.open(index.resolve().as_uri())
        assert _names(b) == names[:PAGE_PAIRS]
        assert b.eval("document.querySelector('.count').textContent") == f"{PAGE_PAIRS} of {len(names)} pairs shown"
        b.eval("document.querySelector('button.more').click()")
        assert _names(b) == names
        assert b.eval("document.querySelector('button.more').hidden") is True
        # the last row, scrolled into view: its lazily loaded pictures arrive, and each link
        # (full size, crop) is a file of the report folder
        last = "document.querySelector('table.pairs tbody:last-of-type')"
        b.eval(f"{last}.scrollIntoView()")
        sizes = b.eval(f"Promise.all(Array.from({last}.querySelectorAll('img')).map(i => i.decode()"
                       ".then(() => i.naturalWidth, () => 0)))")
        assert len(sizes) == 4 + 3 + 2 and all(w > 0 for w in sizes), sizes  # vis, ir, 2 crops; mu, 2x fused+crop
        links = b.eval(f"Array.from({last}.querySelectorAll('a')).map(a => a.href)")
        folder = index.parent.resolve()
        for link in links:
            f = _file_of(link)
            assert f.is_file() and folder in f.parents, link
        # sorting keeps every pair laid out
        b.eval("document.querySelector('table.pairs th[data-m=\"EN\"] button').click()")
        vals = res["per_image"]["heuristic guidance"]
        assert _names(b) == sorted(names, key=lambda n: -vals[n]["EN"])


def test_screenshot_is_not_blank(chromium, page):
    from PIL import Image, ImageStat

    index, _ = page
    shot = index.parent / "screenshot.png"
    with Browser(chromium) as b:
        b.open(index.resolve().as_uri() + "?sort=SD", 1280, 1400)
        shot.write_bytes(b.screenshot(1280, 1400))
    im = Image.open(shot).convert("RGB")
    assert im.size == (1280, 1400)
    gray = im.convert("L")
    assert ImageStat.Stat(gray).stddev[0] > 20, "the screenshot is (nearly) one flat colour"
    # pictures and coloured plots arrived, not just black text on white
    colours = im.resize((320, 350)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 500
