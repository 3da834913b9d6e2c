"""The results page as a person sees it: opened from disk in headless Chromium, sorted through
its URL (``?sort=METRIC&fusion=NAME``, which the page's script honours), and photographed.

Needs Debian's ``chromium``; where it is missing the set-up installs it (as root, with apt-get),
otherwise the tests skip and say why."""
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from hfkernels.cli import main

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # nothing on the page may come from the network: make every host unresolvable
         "--host-resolver-rules=MAP * ~NOTFOUND"]


def _find():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium():
    exe = _find()
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
        exe = _find()
        if exe is None:
            pytest.skip("`apt-get install chromium` ran but no chromium executable was found")
    return exe


def browse(exe, url: str, *extra: str, timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="hfk-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from hfkernels.synthetic import write_pairs

    root = tmp_path_factory.mktemp("browser")
    data = write_pairs(root / "set", n=6, size=(60, 80), seed=3)
    out, js = root / "rep", root / "m.json"
    assert main(["eval", "--data", str(data), "--method", "laplacian,blend,0.3", "--metrics", "EN,Qabf,SD",
                 "--device", "cpu", "--json", str(js), "--report", str(out), "--quiet"]) == 0
    return out / "index.html", json.loads(js.read_text())


def _order(dom: str) -> list[str]:
    table = dom[dom.index('<table class="pairs"'):]
    return re.findall(r'<tbody data-name="([^"]+)"', table)


def test_sorts_from_url(chromium, page):
    index, res = page
    fusion = "heuristic per-pixel blend"
    url = index.resolve().as_uri() + "?sort=Qabf&fusion=" + fusion.replace(" ", "%20")
    r = browse(chromium, url, "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert re.search(r'<table class="pairs"[^>]*data-sort="Qabf"', dom), "the page's script did not sort"
    assert 'data-dir="desc"' in dom  # Qabf: higher is better, so best first
    got = _order(dom)
    vals = res["per_image"][fusion]
    want = sorted(vals, key=lambda n: -vals[n]["Qabf"])
    assert got == want and got != sorted(vals, key=lambda n: vals[n]["Qabf"])
    # ascending on request, and by name
    asc = _order(browse(chromium, url + "&dir=asc", "--dump-dom").stdout)
    assert asc == want[::-1]
    by_name = _order(browse(chromium, index.resolve().as_uri() + "?sort=image&dir=desc", "--dump-dom").stdout)
    assert by_name == sorted(vals, reverse=True)


def test_screenshot_is_not_blank(chromium, page):
    from PIL import Image, ImageStat

    index, _ = page
    shot = index.parent / "screenshot.png"
    r = browse(chromium, index.resolve().as_uri() + "?sort=SD", f"--screenshot={shot}", "--window-size=1280,1400")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    im = Image.open(shot).convert("RGB")
    assert im.size == (1280, 1400)
    gray = im.convert("L")
    assert ImageStat.Stat(gray).stddev[0] > 20, "the screenshot is (nearly) one flat colour"
    # pictures and coloured plots arrived, not just black text on white
    colours = im.resize((320, 350)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 500
