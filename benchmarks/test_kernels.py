"""Pyramid kernels per backend against the ``"torch"`` reference: ``fuse``, ``laplacian_pyramid``,
``reconstruct``, forward and forward+backward; plus an OpenCV (``cv2.pyrDown``/``pyrUp``)
implementation of the same fusion as an optional comparison.

Targets (the project's speed targets for these kernels), checked as ratios measured in this process:
- CPU, 2 threads, (1,1,480,640) float32, backend ``"cpu"``: forward >= 4x and forward+backward
  >= 3x the reference; forward faster than OpenCV's (when opencv is installed).
- GPU, (16,1,480,640) float32 and bfloat16, backends ``"triton"`` and ``"cuda"``: forward and
  forward+backward >= 10x the reference; forward bandwidth (read vis, ir, mu + write out) within
  3x of the card's DRAM bandwidth; peak extra memory of forward+backward <= 3x the inputs' size.
"""
from __future__ import annotations

import pytest
import torch
from conftest import HAS_GPU, REFERENCE, backend_params, rand, skip_unless_backend

import hfkernels

LEVELS = 4
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# (device, shape, dtype name): the target set-ups (not scaled: these are the stated shapes).
SETUPS = [("cpu", (1, 1, 480, 640), "float32")]
if HAS_GPU:
    SETUPS += [("cuda", (16, 1, 480, 640), "float32"), ("cuda", (16, 1, 480, 640), "bfloat16")]
SETUP_IDS = [f"{d}-{'x'.join(map(str, s))}-{t}" for d, s, t in SETUPS]
MODES = ["forward", "fwd+bwd"]

#: speed-up targets vs the reference: (device, backend, mode) -> minimum ratio
TARGETS = {
    ("cpu", "cpu", "forward"): 4.0,
    ("cpu", "cpu", "fwd+bwd"): 3.0,
    **{("cuda", b, m): 10.0 for b in ("triton", "cuda") for m in MODES},
}
ROUNDS = {"cpu": 20, "cuda": 30}


def every_case(fn):
    """Parametrize a benchmark by set-up, mode and backend: the same grid for every op."""
    fn = pytest.mark.parametrize("setup", SETUPS, ids=SETUP_IDS)(fn)
    fn = pytest.mark.parametrize("mode", MODES)(fn)
    return pytest.mark.parametrize("backend", backend_params())(fn)


def _case(op, setup, mode, backend):
    """(device, shape, dtype name, dtype, grad) of a grid point; skips where ``backend`` cannot
    run ``op`` there."""
    device, shape, dt = setup
    dtype = DTYPES[dt]
    skip_unless_backend(op, backend, device, dtype)
    return device, shape, dt, dtype, mode == "fwd+bwd"


def _timed(call, grad, inputs=(), grad_outputs=None):
    """``make(backend) -> fn``, where ``fn()`` runs ``call(backend)``: its forward under no_grad,
    or with ``grad`` its forward and the gradients of ``inputs`` for ``grad_outputs``."""

    def make(bk):
        if not grad:
            def fwd():
                with torch.no_grad():
                    return call(bk)
            return fwd
        return lambda: torch.autograd.grad(call(bk), inputs, grad_outputs)
    return make


def _run_against_reference(rec, make, backend, device) -> float:
    """Time ``make(backend)``, then the reference's in the same process; the speed-up ratio."""
    rec.run(make(backend), rounds=ROUNDS[device])
    if backend == REFERENCE:
        rec.is_reference()
        return 1.0
    return rec.compare(make(REFERENCE), rounds=ROUNDS[device], memory=True)


def _fuse_inputs(device, shape, dtype, grad):
    b, c, h, w = shape
    vis = rand(shape, device, dtype, grad, seed=1)
    ir = rand((b, 1, h, w), device, dtype, grad, seed=2)
    mu = rand((b, 1, h, w), device, dtype, grad, seed=3)
    return vis, ir, mu


def _dram_bandwidth(device) -> float | None:
    """Theoretical DRAM bandwidth of the card in bytes/s (double data rate), if torch reports it."""
    p = torch.cuda.get_device_properties(device)
    clock_khz = getattr(p, "memory_clock_rate", None)
    bus_bits = getattr(p, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8


@every_case
def test_fuse(rec, setup, mode, backend):
    device, shape, dt, dtype, grad = _case("fuse", setup, mode, backend)
    vis, ir, mu = _fuse_inputs(device, shape, dtype, grad)
    g_out = rand(shape, device, dtype, seed=4)
    make = _timed(lambda bk: hfkernels.fuse(vis, ir, mu, LEVELS, backend=bk), grad, (vis, ir, mu), g_out)

    if backend != REFERENCE:
        # A ratio only means something if the result is right: a loose sanity check first.
        with torch.no_grad():
            got = hfkernels.fuse(vis, ir, mu, LEVELS, backend=backend).float()
            want = hfkernels.fuse(vis, ir, mu, LEVELS, backend=REFERENCE).float()
        tol = 1e-3 if dtype == torch.float32 else 5e-2
        assert torch.allclose(got, want, atol=tol, rtol=tol), f"fuse[{backend}] disagrees with the reference"

    rec.describe(op="fuse", mode=mode, shape=shape, dtype=dtype, backend=backend, device=device, levels=LEVELS)
    ratio = _run_against_reference(rec, make, backend, device)

    n_in = vis.numel() + ir.numel() + mu.numel()
    in_bytes = n_in * vis.element_size()
    if device == "cuda" and mode == "forward":
        moved = in_bytes + vis.numel() * vis.element_size()  # read vis, ir, mu + write out
        achieved = moved / rec.seconds
        rec.info["bandwidth_GBps"] = round(achieved / 1e9, 1)
        peak_bw = _dram_bandwidth(device)
        if peak_bw:
            rec.info["dram_GBps"] = round(peak_bw / 1e9, 1)
            rec.info["bandwidth_fraction"] = round(achieved / peak_bw, 3)
    if device == "cpu" and mode == "forward" and backend == "cpu":
        _vs_opencv(rec, vis, ir, mu)

    target = TARGETS.get((device, backend, mode))
    if target:
        rec.target(f"fuse {device} {mode} {dt}", ratio, target)
    if device == "cuda" and backend in ("triton", "cuda"):
        if mode == "forward" and "bandwidth_fraction" in rec.info:
            # "within 3x of DRAM bandwidth" as a ratio: achieved / (peak / 3) >= 1
            rec.target(f"fuse {device} forward {dt} bandwidth", rec.info["bandwidth_fraction"] * 3, 1.0,
                       against="the card's DRAM bandwidth / 3")
        if mode == "fwd+bwd":
            rec.info["peak_extra_over_inputs"] = round(rec.memory.extra / in_bytes, 3)
            rec.target(f"fuse {device} fwd+bwd {dt} peak extra memory", 3.0 * in_bytes / max(rec.memory.extra, 1),
                       1.0, against="3x the inputs' size")


# ---------------------------------------------------------------------------------------------
# OpenCV: the same pyramid fusion with cv2.pyrDown / cv2.pyrUp (its own 5-tap kernel and
# reflect-101 borders, so values differ slightly; the work is the same). Forward only.


def _cv2():
    cv2 = pytest.importorskip("cv2", reason="opencv not installed (optional: pip install opencv-python-headless)")
    cv2.setNumThreads(torch.get_num_threads())
    return cv2


def opencv_fuse(cv2, vis, ir, mu, levels=LEVELS):
    """Pyramid fusion of (H, W) float32 numpy arrays with OpenCV; returns (H, W)."""
    ga, gb = [vis], [ir]
    for _ in range(levels):
        ga.append(cv2.pyrDown(ga[-1]))
        gb.append(cv2.pyrDown(gb[-1]))
    blended = []
    for k in range(levels + 1):
        h, w = ga[k].shape
        m = mu if k == 0 else cv2.resize(mu, (w, h), interpolation=cv2.INTER_LINEAR)
        if k < levels:
            la = ga[k] - cv2.pyrUp(ga[k + 1], dstsize=(w, h))
            lb = gb[k] - cv2.pyrUp(gb[k + 1], dstsize=(w, h))
        else:
            la, lb = ga[k], gb[k]
        blended.append(la + m * (lb - la))
    r = blended[-1]
    for k in range(levels - 1, -1, -1):
        h, w = blended[k].shape
        r = cv2.pyrUp(r, dstsize=(w, h)) + blended[k]
    return r


def _opencv_callable(cv2, vis, ir, mu):
    v, i, m = (t.detach()[0, 0].float().cpu().numpy() for t in (vis, ir, mu))
    return lambda: opencv_fuse(cv2, v, i, m)


def _vs_opencv(rec, vis, ir, mu):
    try:
        import cv2
    except ImportError:
        rec.info["ratio_vs_opencv"] = None
        return
    cv2.setNumThreads(torch.get_num_threads())
    r = rec.compare(_opencv_callable(cv2, vis, ir, mu), rounds=ROUNDS["cpu"], name="opencv",
                    info_key="ratio_vs_opencv")
    rec.target("fuse cpu forward vs OpenCV", r, 1.0, against="opencv")


def test_fuse_opencv(rec):
    """OpenCV's forward on the CPU set-up, in the same group as the backends (ratio vs torch)."""
    cv2 = _cv2()
    device, shape, dt = SETUPS[0]
    vis, ir, mu = _fuse_inputs(device, shape, torch.float32, False)
    fn = _opencv_callable(cv2, vis, ir, mu)
    # Same algorithm, different kernel/borders: close to the reference, not equal.
    want = hfkernels.fuse(vis, ir, mu, LEVELS, backend=REFERENCE)[0, 0].numpy()
    assert abs(fn() - want).mean() < 0.02, "the OpenCV fusion drifted from the reference algorithm"
    rec.describe(op="fuse", mode="forward", shape=shape, dtype=torch.float32, backend="opencv", device=device,
                 levels=LEVELS, note="cv2.pyrDown/pyrUp; forward only (OpenCV has no backward)")
    rec.run(fn, rounds=ROUNDS[device])
    rec.compare(_timed(lambda bk: hfkernels.fuse(vis, ir, mu, LEVELS, backend=bk), False)(REFERENCE),
                rounds=ROUNDS[device])


# ---------------------------------------------------------------------------------------------
# Pyramid and collapse on their own


@every_case
def test_laplacian_pyramid(rec, setup, mode, backend):
    device, shape, dt, dtype, grad = _case("laplacian_pyramid", setup, mode, backend)
    x = rand(shape, device, dtype, grad, seed=5)
    with torch.no_grad():
        g_outs = [torch.randn_like(t) for t in hfkernels.laplacian_pyramid(x, LEVELS, backend=REFERENCE)]
    make = _timed(lambda bk: hfkernels.laplacian_pyramid(x, LEVELS, backend=bk), grad, x, g_outs)
    rec.describe(op="laplacian_pyramid", mode=mode, shape=shape, dtype=dtype, backend=backend, device=device,
                 levels=LEVELS)
    _run_against_reference(rec, make, backend, device)


@every_case
def test_reconstruct(rec, setup, mode, backend):
    device, shape, dt, dtype, grad = _case("reconstruct", setup, mode, backend)
    with torch.no_grad():
        pyr = hfkernels.laplacian_pyramid(rand(shape, device, dtype, seed=6), LEVELS, backend=REFERENCE)
    pyr = [t.clone().requires_grad_(grad) for t in pyr]
    g_out = rand(shape, device, dtype, seed=7)
    make = _timed(lambda bk: hfkernels.reconstruct(pyr, backend=bk), grad, pyr, g_out)
    rec.describe(op="reconstruct", mode=mode, shape=shape, dtype=dtype, backend=backend, device=device,
                 levels=LEVELS)
    _run_against_reference(rec, make, backend, device)
