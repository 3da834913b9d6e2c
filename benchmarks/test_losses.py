"""Loss kernels per backend against plain formulations: SSIM (windows 48 and 11) forward+backward
against the dense 2-D-convolution SSIM of the released loss (``hfkernels.core.loss_reference``),
gradient-max, and ``FusionLoss`` against the plain composition (``loss_reference.fusion_loss``);
pytorch-msssim as an optional comparison for window 11.

Targets (the project's speed targets for the loss kernels), as ratios measured in this process:
- CPU, 2 threads, backend ``"cpu"``: SSIM window 48 fwd+bwd >= 20x the dense formulation;
  FusionLoss fwd+bwd >= 10x the plain composition.
- GPU, (16,3,480,640), backends ``"triton"``/``"cuda"``: the same, plus SSIM window 11 fwd+bwd
  >= 5x pytorch-msssim.

Scaled CPU shapes: the dense 48x48 reference takes about 80 s forward+backward for one
(1,3,480,640) pair on the 2-core CPU (FusionLoss: about 130 s), so on the CPU the window-48 SSIM and
FusionLoss run at (1,3,120,160) by default; ``HFK_BENCH_FULL=1`` runs the target's (1,3,480,640).
Window 11 and gradient-max run at (1,3,480,640) / (1,1,480,640) everywhere on the CPU.
"""
from __future__ import annotations

import os

import pytest
import torch
from conftest import HAS_GPU, backend_params, rand, shape_str, skip_unless_backend

import hfkernels
from hfkernels.core import loss_reference as lref

FULL = os.environ.get("HFK_BENCH_FULL", "0") not in ("", "0")
DEVICES = ["cpu"] + (["cuda"] if HAS_GPU else [])
GPU_SHAPE = (16, 3, 480, 640)
CPU_FULL = (1, 3, 480, 640)
CPU_SCALED = (1, 3, 120, 160)


def shape_for(device: str, heavy: bool):
    """(shape, note): ``heavy`` set-ups (dense window-48 reference) are scaled on the CPU."""
    if device == "cuda":
        return GPU_SHAPE, None
    if heavy and not FULL:
        return CPU_SCALED, (f"scaled CPU shape {shape_str(CPU_SCALED)} (the target's is {shape_str(CPU_FULL)}, "
                            "where the dense 48x48 reference takes ~80 s per call; HFK_BENCH_FULL=1 runs it)")
    return CPU_FULL, None


#: how often each reference is run per comparison (the dense ones take seconds)
REF_ROUNDS = {"cpu": 2, "cuda": 10}
ROUNDS = {"cpu": 5, "cuda": 20}
FAST = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}


def _skip_unless_loss_backend(op, backend, device):
    if backend == "dense2d":
        return
    if backend == "pytorch-msssim":
        pytest.importorskip("pytorch_msssim", reason="pytorch-msssim not installed (optional: pip install pytorch-msssim)")
        return
    for o in op if isinstance(op, tuple) else (op,):
        skip_unless_backend(o, backend, device)


def _grad_of(loss_fn, inputs):
    return lambda: torch.autograd.grad(loss_fn(), inputs)


# ---------------------------------------------------------------------------------------------
# SSIM


@pytest.mark.parametrize("backend", ["dense2d", "pytorch-msssim"] + backend_params())
@pytest.mark.parametrize("window", [48, 11])
@pytest.mark.parametrize("device", DEVICES)
def test_ssim(rec, device, window, backend):
    """``ssim_loss(x, y, window, 1.5, data_range=1, "valid")`` forward+backward for both inputs."""
    if backend == "pytorch-msssim" and window != 11:
        pytest.skip("pytorch-msssim is compared at window 11 only")
    _skip_unless_loss_backend("ssim", backend, device)
    shape, note = shape_for(device, heavy=window == 48)
    x = rand(shape, device, torch.float32, True, seed=11)
    y = rand(shape, device, torch.float32, True, seed=12)

    def loss_of(bk):
        if bk == "dense2d":
            return lambda: lref.ssim_loss(x, y, window, 1.5, 1.0)
        if bk == "pytorch-msssim":
            from pytorch_msssim import ssim as ms_ssim

            return lambda: 1 - ms_ssim(x, y, data_range=1.0, win_size=window, win_sigma=1.5)
        return lambda: hfkernels.ssim_loss(x, y, window, 1.5, 1.0, "valid", backend=bk)

    if backend != "dense2d":
        # the comparison is only fair if the value is the same
        with torch.no_grad():
            got, want = float(loss_of(backend)()), float(loss_of("dense2d")())
        assert abs(got - want) < 1e-4, f"ssim_loss[{backend}] = {got}, dense 2-D reference = {want}"

    rec.describe(op=f"ssim_loss w{window}", mode="fwd+bwd", shape=shape, dtype=torch.float32, backend=backend,
                 device=device, shape_note=note, window=window)
    heavy = backend == "dense2d" and device == "cpu"
    rec.run(_grad_of(loss_of(backend), (x, y)), rounds=REF_ROUNDS[device] if heavy else ROUNDS[device],
            warmup=0 if heavy else 1)
    if backend == "dense2d":
        rec.is_reference()
        rec.info["ratio_reference"] = "dense2d"
        return
    ratio = rec.compare(_grad_of(loss_of("dense2d"), (x, y)), rounds=REF_ROUNDS[device], name="dense2d",
                        memory=True, warmup=device != "cpu")
    if window == 48 and backend in FAST[device]:
        rec.target(f"ssim_loss w48 {device} fwd+bwd", ratio, 20.0, against="dense2d")
    if window == 11 and backend not in ("pytorch-msssim",):
        try:
            import pytorch_msssim  # noqa: F401
        except ImportError:
            return
        r = rec.compare(_grad_of(loss_of("pytorch-msssim"), (x, y)), rounds=REF_ROUNDS[device],
                        name="pytorch-msssim", info_key="ratio_vs_msssim", warmup=device != "cpu")
        if device == "cuda" and backend in FAST[device]:
            rec.target(f"ssim_loss w11 {device} fwd+bwd vs pytorch-msssim", r, 5.0, against="pytorch-msssim")


# ---------------------------------------------------------------------------------------------
# Gradient-max


@pytest.mark.parametrize("backend", ["plain"] + backend_params())
@pytest.mark.parametrize("device", DEVICES)
def test_gradient_max(rec, device, backend):
    """``gradient_max_loss(a, b, f)`` on gray images, forward+backward for a, b and f."""
    if backend != "plain":
        skip_unless_backend("gradient_max", backend, device)
    b, _, h, w = shape_for(device, heavy=False)[0]
    shape = (b, 1, h, w)
    a_, b_, f_ = (rand(shape, device, torch.float32, True, seed=s, lo=-1, hi=1) for s in (21, 22, 23))

    def loss_of(bk):
        if bk == "plain":
            return lambda: lref.gradient_max(a_, b_, f_)
        return lambda: hfkernels.gradient_max_loss(a_, b_, f_, backend=bk)

    if backend != "plain":
        with torch.no_grad():
            got, want = float(loss_of(backend)()), float(loss_of("plain")())
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), f"gradient_max[{backend}] = {got}, plain = {want}"
    rec.describe(op="gradient_max_loss", mode="fwd+bwd", shape=shape, dtype=torch.float32, backend=backend,
                 device=device)
    rec.run(_grad_of(loss_of(backend), (a_, b_, f_)), rounds=ROUNDS[device] * 2)
    if backend == "plain":
        rec.is_reference()
        rec.info["ratio_reference"] = "plain"
        return
    rec.compare(_grad_of(loss_of("plain"), (a_, b_, f_)), rounds=ROUNDS[device] * 2, name="plain", memory=True)


# ---------------------------------------------------------------------------------------------
# FusionLoss


@pytest.mark.parametrize("backend", ["plain"] + backend_params())
@pytest.mark.parametrize("device", DEVICES)
def test_fusion_loss(rec, device, backend):
    """``FusionLoss()(vis, ir, fused)`` (released defaults, window 48) forward+backward for ``fused``."""
    if backend != "plain":
        _skip_unless_loss_backend(("ssim", "gradient_max"), backend, device)
    shape, note = shape_for(device, heavy=True)
    b, _, h, w = shape
    vis = rand(shape, device, torch.float32, seed=31, lo=-1, hi=1)
    ir = rand((b, 1, h, w), device, torch.float32, seed=32, lo=-1, hi=1)
    fused = rand(shape, device, torch.float32, True, seed=33, lo=-1, hi=1)

    def loss_of(bk):
        if bk == "plain":
            return lambda: lref.fusion_loss(vis, ir, fused)[0]
        module = hfkernels.FusionLoss(backend=bk)
        return lambda: module(vis, ir, fused)

    if backend != "plain":
        with torch.no_grad():
            got, want = float(loss_of(backend)()), float(loss_of("plain")())
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), f"FusionLoss[{backend}] = {got}, plain = {want}"
    rec.describe(op="FusionLoss", mode="fwd+bwd", shape=shape, dtype=torch.float32, backend=backend, device=device,
                 shape_note=note, window=48)
    heavy = backend == "plain" and device == "cpu"
    rec.run(_grad_of(loss_of(backend), (fused,)), rounds=REF_ROUNDS[device] if heavy else ROUNDS[device],
            warmup=0 if heavy else 1)
    if backend == "plain":
        rec.is_reference()
        rec.info["ratio_reference"] = "plain"
        return
    ratio = rec.compare(_grad_of(loss_of("plain"), (fused,)), rounds=REF_ROUNDS[device], name="plain", memory=True,
                        warmup=device != "cpu")
    if backend in FAST[device]:
        rec.target(f"FusionLoss {device} fwd+bwd", ratio, 10.0, against="the plain composition")
