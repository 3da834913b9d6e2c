"""Metrics of large images in row bands (hfkernels.metrics.tiled): the same values as the
whole-image path, which stays the oracle, and memory bounded where the whole-image path's is not.

The band size is forced down to a few rows, so small odd-sized images cross many band borders,
VIF's subsampled scales included, and the last band may be a single row."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hfkernels import metrics as M
from hfkernels.metrics import tiled


def img(b, c, h, w, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=dtype)
    # smooth + noise: texture and flat-ish regions for every metric
    x = F.avg_pool2d(x, 5, 1, 2) * 0.7 + 0.3 * x
    return (x * 255).round() / 255


def whole_and_banded(monkeypatch, vis, ir, fused, rows=8, **kw):
    """evaluate() on the whole images, then in bands of ``rows`` rows (checked to be taken)."""
    monkeypatch.setattr(tiled, "TILE_PIXELS", 1 << 60)
    whole = M.evaluate(vis, ir, fused, **kw)
    calls = []
    real = tiled.evaluate_bands
    monkeypatch.setattr(tiled, "evaluate_bands", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(tiled, "TILE_PIXELS", 0)
    b, w = vis.shape[0] if vis.dim() == 4 else 1, vis.shape[-1]
    monkeypatch.setattr(tiled, "BAND_PIXELS", rows * b * w)
    assert tiled.band_rows(b, w) == rows
    banded = M.evaluate(vis, ir, fused, **kw)
    assert calls, "the banded path was not taken"
    return whole, banded


def assert_same(whole, banded):
    assert list(banded) == list(whole)
    for name in whole:
        torch.testing.assert_close(banded[name], whole[name], rtol=1e-9, atol=1e-12, equal_nan=True,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("protocol", ["paper", "standard"])
@pytest.mark.parametrize("b,cv,h,w,dtype", [
    (1, 1, 37, 53, torch.float32),    # VIF not available (NaN); SSIM's windows cross bands
    (1, 3, 200, 131, torch.float32),  # RGB, paper gray quirk; bands fill the height exactly
    (2, 3, 131, 200, torch.float64),  # a batch; float64 inputs (levels snapped)
    (1, 1, 97, 45, torch.float32),    # the last band is one row
    (1, 1, 41, 41, torch.float64),    # VIF's smallest size: its last scale has one window
    (1, 3, 130, 1, torch.float32),    # one pixel wide (SF and AG without horizontal neighbours)
])
def test_banded_equals_whole(monkeypatch, protocol, b, cv, h, w, dtype):
    vis, ir, fused = img(b, cv, h, w, dtype, 1), img(b, 1, h, w, dtype, 2), img(b, cv, h, w, dtype, 3)
    assert_same(*whole_and_banded(monkeypatch, vis, ir, fused, protocol=protocol, unavailable="nan"))


@pytest.mark.parametrize("rows", [16, 24, 64])
def test_other_band_heights(monkeypatch, rows):
    vis, ir, fused = img(1, 3, 203, 77, seed=4), img(1, 1, 203, 77, seed=5), img(1, 3, 203, 77, seed=6)
    assert_same(*whole_and_banded(monkeypatch, vis, ir, fused, rows=rows))


@pytest.mark.parametrize("protocol", ["paper", "standard"])
@pytest.mark.parametrize("case", ["zeros", "constant", "vis constant", "F = vis", "edge-free sources"])
def test_degenerate_inputs_banded(monkeypatch, protocol, case):
    t, u = img(1, 1, 67, 50, seed=7), img(1, 1, 67, 50, seed=8)
    z, c = torch.zeros_like(t), torch.full_like(t, 0.3)
    f = z.clone()
    f[..., 30:, :] = 1.0  # an edge F adds to sources without any (Qabf/Nabf's equal weights)
    vis, ir, fused = {"zeros": (z, z, z), "constant": (c, c, c), "vis constant": (c, t, u),
                      "F = vis": (t, u, t), "edge-free sources": (z, z, f)}[case]
    assert_same(*whole_and_banded(monkeypatch, vis, ir, fused, protocol=protocol))


def test_single_metric_functions_and_unavailable_metrics_banded(monkeypatch):
    vis, ir, fused = img(1, 1, 37, 53, seed=9), img(1, 1, 37, 53, seed=10), img(1, 1, 37, 53, seed=11)
    monkeypatch.setattr(tiled, "TILE_PIXELS", 1 << 60)
    want = M.ssim(vis, ir, fused)
    with pytest.raises(M.MetricUnavailable) as whole:
        M.evaluate(vis, ir, fused)
    monkeypatch.setattr(tiled, "TILE_PIXELS", 0)
    monkeypatch.setattr(tiled, "BAND_PIXELS", 8 * 53)
    torch.testing.assert_close(M.ssim(vis, ir, fused), want, rtol=1e-9, atol=0)
    with pytest.raises(M.MetricUnavailable) as banded:  # the same error, before any work
        M.evaluate(vis, ir, fused)
    assert str(banded.value) == str(whole.value)


def test_large_images_are_banded_by_default():
    assert not tiled.should_tile(1, 1080, 1920)  # everyday sizes: the whole-image path
    assert tiled.should_tile(1, 3000, 3000)
    # memory estimate: the whole-image path's grows with the image, the banded one's barely
    assert tiled.needed_bytes(1, 1080, 1920) > 300 * 1080 * 1920
    assert tiled.needed_bytes(1, 8000, 8000) < 2 * 2**30


_LIMITED = r"""
import json, math, resource, sys
import torch
from hfkernels.metrics import evaluate, tiled
from hfkernels.evaluation import out_of_memory

def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

n, budget = int(sys.argv[1]), float(sys.argv[2]) * 2**30
g = torch.Generator().manual_seed(0)
vis, ir = torch.rand(1, 1, n, n, generator=g), torch.rand(1, 1, n, n, generator=g)
fused = (vis + ir) / 2
evaluate(vis[..., :64, :64], ir[..., :64, :64], fused[..., :64, :64])  # threads and arenas made
# what torch and the inputs take is not the metrics': the limit is that plus the budget
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + int(budget), resource.RLIM_INFINITY))
out = {}
tiled.TILE_PIXELS = 1 << 60
try:
    evaluate(vis, ir, fused)
    out["whole"] = "ok"
except (RuntimeError, MemoryError) as e:
    out["whole"] = "out of memory" if out_of_memory(e) else repr(e)
tiled.TILE_PIXELS = 1 << 21
out["banded"] = {k: float(v) for k, v in evaluate(vis, ir, fused).items()}
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc for the address space")
def test_eval_of_a_large_pair_under_a_memory_limit():
    """A 3000x3000 pair under 1.5 GiB of address space beyond torch and the inputs: the
    whole-image path (~390 bytes a pixel, 3.5 GB) runs out of memory; in bands every metric
    is computed (measured: they need about 0.7 GB)."""
    resource = pytest.importorskip("resource")
    assert resource.RLIMIT_AS
    # two threads and two malloc arenas: address space that grows with the core count is not
    # what this test is about
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "2",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run([sys.executable, "-c", _LIMITED, "3000", "1.5"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["whole"] == "out of memory", out
    assert set(out["banded"]) == set(M.METRICS)
    assert all(v == v and abs(v) < float("inf") for v in out["banded"].values()), out["banded"]


def test_eval_out_of_memory_states_what_the_banded_metrics_need(monkeypatch):
    """eval's one line for a pair that does not fit gives the banded path's estimate (under
    1 GiB for 12 megapixels), not the whole-image path's ~4.5 GiB."""
    from hfkernels.evaluation import scoring

    class Big:
        name = "big.png"

        def load(self):  # no memory: expanded views
            x = torch.zeros(1, 1, 1, 1)
            return x.expand(1, 3, 3000, 4000), x.expand(1, 1, 3000, 4000), x.expand(1, 3, 3000, 4000)

    def no_memory(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    monkeypatch.setattr(scoring, "evaluate", no_memory)
    with pytest.raises(scoring.EvaluationError) as e:
        scoring.score([Big()], {"own": None}, ["EN"])
    need = tiled.needed_bytes(1, 3000, 4000) / 2**30
    assert need < 1.0
    assert e.value.problems == [f"big.png: not enough memory for a 4000x3000 pair (the metrics need about {need:.1f} GiB)"]
