"""Loss ops ("ssim", "gradient_max") of every backend and FusionLoss against the transcription of
the released loss (hfkernels/core/loss_reference.py), plus hand-computed values and argument errors.

Backends are discovered from the registry (a backend that registers "ssim"/"gradient_max" is
tested here automatically). The Triton interpreter is slow, so it only sees small shapes.
"""
import math

import pytest
import torch

import hfkernels as hk
from hfkernels.core import loss_reference as lref
from hfkernels.core import reference as ref
from hfkernels.core.backends import get_backend, tolerance
from hfkernels.core.losses import ssim_per_image
from hfkernels.io import read_image

from .conftest import backend_device_pairs

SSIM = backend_device_pairs("ssim")
GMAX = backend_device_pairs("gradient_max")


def _interp(backend, device):
    return backend == "triton" and device == "cpu"


def _f64(backend, device):
    return torch.float64 in get_backend(backend).dtypes[torch.device(device).type]


def _pair(shape, device, dtype=torch.float32, seed=0, lo=0.0, hi=1.0):
    """x random, y = a blurred/noisy version of x (so SSIM is neither ~0 nor ~1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = 0.6 * x + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64)
    x, y = lo + (hi - lo) * x, lo + (hi - lo) * y
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def _rel_err(got, want):
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _ssim_shapes(backend, device):
    if _interp(backend, device):
        return [(1, 2, 13, 15), (1, 1, 50, 53)]
    return [(2, 3, 37, 53), (1, 1, 61, 50), (3, 2, 19, 24)]


def test_reference_backend_is_tested():
    # the torch backend is the one the kernels are held to: it must itself be compared with the
    # transcription of the released loss, for both ops
    for test in (test_ssim_value_and_gradient, test_gradient_max_value_and_gradient):
        tested = [p for m in test.pytestmark if m.args[0] == "backend,device" for p in m.args[1]]
        assert ("torch", "cpu") in tested, f"{test.__name__} does not run the torch backend"


# ---------------------------------------------------------------------------------------------
# SSIM against the dense 2-D transcription


@pytest.mark.parametrize("backend,device", SSIM)
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("window", [11, 48, 8, 1])
def test_ssim_value_and_gradient(backend, device, padding, window):
    dtypes = [torch.float32] + ([torch.float64] if _f64(backend, device) and not _interp(backend, device) else [])
    for shape in _ssim_shapes(backend, device):
        for dtype in dtypes:
            x, y = _pair(shape, device, dtype, seed=window)
            xr, yr = x.double().cpu().requires_grad_(), y.double().cpu().requires_grad_()
            want = lref.ssim_per_image(xr, yr, window, 1.5, 1.0, padding)
            g = torch.linspace(0.5, 1.5, shape[0], dtype=torch.float64)
            gxr, gyr = torch.autograd.grad(want, (xr, yr), g)

            xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
            got = ssim_per_image(xs, ys, window, 1.5, 1.0, padding, backend=backend)
            assert got.shape == (shape[0],) and got.dtype == dtype
            atol, rtol = tolerance(backend, dtype)
            torch.testing.assert_close(got.double().cpu(), want.detach(), atol=atol, rtol=rtol)
            gx, gy = torch.autograd.grad(got, (xs, ys), g.to(device=device, dtype=dtype))
            lim = 1e-4 if dtype == torch.float32 else 1e-9
            for name, a, b in (("x", gx, gxr), ("y", gy, gyr)):
                err = _rel_err(a.cpu(), b)
                assert err <= lim, f"{backend} {padding} w={window} {shape} {dtype}: grad {name} rel err {err:.2e}"


@pytest.mark.parametrize("backend,device", SSIM)
@pytest.mark.parametrize("sigma", [0.3, 1.5, 4.0])
def test_ssim_sigma_and_mean(backend, device, sigma):
    x, y = _pair((2, 1, 24, 21), device, seed=3, lo=-1, hi=1)
    want = lref.ssim(x.double().cpu(), y.double().cpu(), 9, sigma, 2.0)
    got = hk.ssim(x, y, 9, sigma, 2.0, backend=backend)
    assert got.dim() == 0
    torch.testing.assert_close(got.double().cpu(), want, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(hk.ssim_loss(x, y, 9, sigma, 2.0, backend=backend), 1 - got)


@pytest.mark.parametrize("backend,device", [p for p in SSIM if _f64(*p)])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("window", [5, 4])
def test_ssim_gradcheck_float64(backend, device, padding, window):
    shape = (2, 2, 7, 8)
    if _interp(backend, device):  # gradcheck runs the op 4 x numel times: keep it tiny
        if (window, padding) not in ((4, "same"), (5, "valid")):
            pytest.skip("the Triton interpreter is slow: two configurations cover it")
        shape = (1, 1, 5, 6)
    x, y = _pair(shape, device, torch.float64, seed=5)
    ins = (x.requires_grad_(), y.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda a, b: ssim_per_image(a, b, window, 1.5, 1.0, padding, backend=backend), ins
    )


@pytest.mark.parametrize("backend,device", SSIM)
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("value", [0.0, 0.3, -0.71, 200.0])
def test_ssim_constant_images_give_exactly_one(backend, device, padding, value):
    shape = (1, 2, 12, 13) if _interp(backend, device) else (2, 3, 20, 23)
    # exactly 1 on the CPU. On a GPU the kernels contract a*b + c into fused multiply-adds and
    # torch's convolutions (cuDNN) pick their own summation order per channel, so numerator and
    # denominator may round apart: measured on an H200, the kernels within 2 ulp of 1 and the
    # torch backend within 1.6e-6, inside the float32 tolerance of the backends
    tol = 0.0 if device == "cpu" else tolerance(backend, torch.float32)[0]
    for window in (11, 48, 6):
        x = torch.full(shape, value, device=device).requires_grad_()
        s = hk.ssim(x, x, window, padding=padding, data_range=None, backend=backend)
        assert abs(float(s.detach()) - 1.0) <= tol, f"{backend}: SSIM of a constant image with itself is {float(s.detach())!r}"
        (gx,) = torch.autograd.grad(s, x)
        assert torch.isfinite(gx).all()
        # the same constant as two different tensors, and a constant against a textured image
        y = torch.full_like(x, value).requires_grad_()
        assert abs(float(hk.ssim(x, y, window, padding=padding, backend=backend).detach()) - 1.0) <= tol
        t, _ = _pair(x.shape, device, seed=7)
        t.requires_grad_()
        v = hk.ssim(x, t, window, padding=padding, backend=backend)
        gx, gt = torch.autograd.grad(v, (x, t))
        assert torch.isfinite(v) and torch.isfinite(gx).all() and torch.isfinite(gt).all()


@pytest.mark.parametrize("backend,device", SSIM)
def test_ssim_two_constants_luminance_only(backend, device):
    # Hand-computed: constants a, b have zero (co)variances, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, L = 0.2, 0.7, 1.0
    x = torch.full((1, 2, 15, 16), a, device=device)
    y = torch.full((1, 2, 15, 16), b, device=device)
    c1 = (0.01 * L) ** 2
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    got = float(hk.ssim(x, y, 7, data_range=L, backend=backend))
    assert math.isclose(got, want, rel_tol=1e-5)


@pytest.mark.parametrize("backend,device", SSIM)
def test_ssim_window_one_is_pointwise(backend, device):
    # Hand-computed: a 1x1 window has zero variances, SSIM map = (2xy + C1) / (x^2 + y^2 + C1).
    x, y = _pair((1, 3, 6, 5), device, torch.float32, seed=9)
    c1 = 1e-4
    want = ((2 * x * y + c1) / (x * x + y * y + c1)).mean()
    # On a GPU the kernels' variances E[x^2] - E[x]^2 are a fused multiply-add, which leaves the
    # rounding error of E[x]^2 (~1e-8) instead of an exact zero; over C2 = 9e-4 that is ~1e-5.
    tol = 1e-6 if device == "cpu" else 5e-5
    torch.testing.assert_close(hk.ssim(x, y, 1, backend=backend), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend,device", SSIM)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 1, 1, 1), (1, 2, 1, 30), (1, 1, 9, 2)])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_ssim_images_smaller_than_window(backend, device, shape, padding):
    x, y = _pair(shape, device, seed=11)
    want = lref.ssim(x.double().cpu(), y.double().cpu(), 48, 1.5, 1.0, padding)
    xs = x.clone().requires_grad_()
    got = hk.ssim(xs, y, 48, padding=padding, backend=backend)
    torch.testing.assert_close(got.double().cpu(), want, atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(got, xs)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("backend,device", SSIM)
def test_ssim_data_range_rule(backend, device):
    # released rule: L from the first argument only
    x, y = _pair((1, 1, 16, 16), device, seed=13, lo=-1, hi=1)
    assert lref.released_data_range(x) == 2.0
    assert lref.released_data_range(x.clamp_min(-0.4)) == 1.0
    assert lref.released_data_range(x * 200) == 256.0
    assert lref.released_data_range(x.abs() * 200) == 255.0
    for xx in (x, x.clamp_min(-0.4), x * 200):
        L = lref.released_data_range(xx)
        torch.testing.assert_close(hk.ssim(xx, y, 7, data_range=None, backend=backend),
                                   hk.ssim(xx, y, 7, data_range=L, backend=backend))


@pytest.mark.parametrize("backend,device", [p for p in SSIM if not _interp(*p)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ssim_half_precision(backend, device, dtype):
    if dtype not in get_backend(backend).dtypes[torch.device(device).type]:
        pytest.skip(f"{backend} does not take {dtype}")
    x, y = _pair((1, 3, 30, 33), device, dtype, seed=15)
    xs = x.clone().requires_grad_()
    got = hk.ssim(xs, y, 11, backend=backend)
    assert got.dtype == dtype
    want = lref.ssim(x.double().cpu(), y.double().cpu(), 11)
    torch.testing.assert_close(got.double().cpu(), want, atol=2e-2, rtol=2e-2)
    got.backward()
    assert xs.grad.dtype == dtype and torch.isfinite(xs.grad.float()).all()


_REAL_CACHE = {}


def _roadscene(data_dir, index, crop, ir_mode):
    """A RoadScene pair in [-1, 1], cropped to an odd size: vis (1,3,h,w), ir (1,1|3,h,w)."""
    name = sorted(p.name for p in (data_dir / "RoadScene" / "vi").iterdir())[index]
    vis = read_image(data_dir / "RoadScene" / "vi" / name, "rgb")[None] * 2 - 1
    ir = read_image(data_dir / "RoadScene" / "ir" / name, ir_mode)[None] * 2 - 1
    (r0, r1), (c0, c1) = crop
    return vis[..., r0:r1, c0:c1].contiguous(), ir[..., r0:r1, c0:c1].contiguous()


def _ssim_reference_cached(key, vis, ir, window, padding):
    """(value, grad wrt vis) of the float64 dense transcription, computed once for all backends
    (the dense 48x48 float64 convolution is slow on CPU)."""
    if key not in _REAL_CACHE:
        ar = vis.double().requires_grad_()
        want = lref.ssim(ar, ir.double(), window, 1.5, None, padding)
        _REAL_CACHE[key] = (want.detach(), torch.autograd.grad(want, ar)[0])
    return _REAL_CACHE[key]


@pytest.mark.parametrize("backend,device", [p for p in SSIM if not _interp(*p)])
def test_ssim_real_images(data_dir, backend, device):
    for index in (0, 1):
        vis, ir = _roadscene(data_dir, index, ((3, 100), (5, 136)), "rgb")  # 97 x 131
        for window, padding in ((48, "valid"), (11, "same")):
            want, gr = _ssim_reference_cached(("ssim", index, window, padding), vis, ir, window, padding)
            a = vis.to(device).requires_grad_()
            got = hk.ssim(a, ir.to(device), window, padding=padding, data_range=None, backend=backend)
            # float32 rounding of E[x^2] - mu^2: the dense float32 transcription is up to 1.3e-4
            # off the float64 value on such images, and 2e-3 off its gradient
            torch.testing.assert_close(got.double().cpu(), want, atol=3e-5, rtol=0)
            (g,) = torch.autograd.grad(got, a)
            err = _rel_err(g.cpu(), gr)
            assert err <= 1e-3, f"{backend} w={window} {padding}: grad rel err {err:.2e}"


@pytest.mark.parametrize("backend,device", [p for p in SSIM if not _interp(*p)])
def test_ssim_non_contiguous_inputs(backend, device):
    x, y = _pair((2, 3, 26, 21), device, seed=17)
    xn = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    yn = torch.stack([y, y], -1)[..., 0]
    want = hk.ssim(x, y, 11, backend=backend)
    torch.testing.assert_close(hk.ssim(xn, yn, 11, backend=backend), want)


# ---------------------------------------------------------------------------------------------
# Gradient-max loss


def _gmax_inputs(shape, device, dtype=torch.float32, seed=0, quantised=False):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.rand(shape, generator=g, dtype=torch.float64) for _ in range(3)]
    if quantised:  # 8-bit levels and flat patches: many ties |Sa| == |Sb| and |Sf| == max
        ts = [(t * 4).floor() / 4 for t in ts]
        ts[1][..., : shape[-2] // 2, :] = ts[0][..., : shape[-2] // 2, :]
        ts[2][..., :, : shape[-1] // 3] = ts[0][..., :, : shape[-1] // 3]
    return [t.to(device=device, dtype=dtype) for t in ts]


def test_sobel_order_equals_convolution():
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    gx, gy = lref.sobel_replicate(x)
    wx, wy = ref.sobel(x, "replicate")
    torch.testing.assert_close(gx, wx, atol=1e-13, rtol=0)
    torch.testing.assert_close(gy, wy, atol=1e-13, rtol=0)
    flat = torch.full((1, 1, 5, 6), 0.3)
    assert (torch.stack(lref.sobel_replicate(flat)) == 0).all()


def test_gradient_max_hand_computed():
    # f = s * column index: interior Sx f = (1 + 2 + 1) * 2s = 8s, replicate border columns 4s, Sy f = 0.
    h, w, s = 4, 5, 0.25
    f = (s * torch.arange(w, dtype=torch.float32)).expand(1, 1, h, w).contiguous()
    z = torch.zeros_like(f)
    want = ((w - 2) * 8 * s + 2 * 4 * s) / w
    for backend, device in GMAX:
        f, z = f.to(device), z.to(device)
        got = hk.gradient_max_loss(z, z, f, backend=backend)
        assert math.isclose(float(got), want, rel_tol=1e-6), backend
        # f is the max-gradient source itself: zero loss
        assert float(hk.gradient_max_loss(f, z, f, backend=backend)) == 0, backend


@pytest.mark.parametrize("backend,device", GMAX)
@pytest.mark.parametrize("quantised", [False, True])
def test_gradient_max_value_and_gradient(backend, device, quantised):
    shapes = [(1, 1, 6, 7), (2, 1, 1, 5), (1, 1, 1, 1)] if _interp(backend, device) else \
        [(2, 1, 31, 45), (1, 3, 17, 8), (1, 1, 1, 1), (1, 1, 2, 9)]
    dtypes = [torch.float32] + ([torch.float64] if _f64(backend, device) else [])
    for shape in shapes:
        for dtype in dtypes:
            ins = _gmax_inputs(shape, device, dtype, seed=len(shape) + shape[-1], quantised=quantised)
            refs = [t.double().cpu().requires_grad_() for t in ins]
            want = lref.gradient_max(*refs)
            grads_ref = torch.autograd.grad(want, refs)
            ts = [t.clone().requires_grad_() for t in ins]
            got = hk.gradient_max_loss(*ts, backend=backend)
            assert got.dim() == 0 and got.dtype == dtype
            atol, rtol = tolerance(backend, dtype)
            torch.testing.assert_close(got.double().cpu(), want.detach(), atol=atol, rtol=rtol)
            grads = torch.autograd.grad(got, ts)
            lim = 1e-5 if dtype == torch.float32 else 1e-12
            for name, a, b in zip("abf", grads, grads_ref):
                err = _rel_err(a.cpu(), b)
                assert err <= lim, f"{backend} {shape} {dtype}: grad {name} rel err {err:.2e}"


@pytest.mark.parametrize("backend,device", [p for p in GMAX if _f64(*p)])
def test_gradient_max_gradcheck_float64(backend, device):
    # generic inputs (no ties), where the loss is differentiable
    shape = (1, 1, 4, 5) if _interp(backend, device) else (1, 2, 5, 6)
    ins = tuple(t.requires_grad_() for t in _gmax_inputs(shape, device, torch.float64, seed=21))
    assert torch.autograd.gradcheck(lambda a, b, f: hk.gradient_max_loss(a, b, f, backend=backend), ins)


# ---------------------------------------------------------------------------------------------
# FusionLoss


def _fusion_inputs(shape, device, cir=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = shape
    vis = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    ir = torch.rand(b, cir, h, w, generator=g) * 2 - 1
    fused = (0.5 * vis + 0.5 * ir + 0.2 * torch.rand(b, 3, h, w, generator=g)).clamp(-1, 1)
    return vis.to(device), ir.to(device), fused.to(device)


def _check_fusion(vis, ir, fused, backend, lim=1e-4, **kw):
    ins = [t.clone().requires_grad_() for t in (vis, ir, fused)]
    loss = hk.FusionLoss(backend=backend, **kw)
    total, terms = loss(*ins, return_terms=True)
    refs = [t.double().cpu().requires_grad_() for t in (vis, ir, fused)]
    want, want_terms = lref.fusion_loss(*refs, **kw)
    assert set(terms) == {"max", "consist", "grad", "ssim", "color"}
    for k in terms:
        torch.testing.assert_close(terms[k].double().cpu(), want_terms[k].detach(), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(total.double().cpu(), want.detach(), atol=5e-5, rtol=2e-5)
    torch.testing.assert_close(loss(*ins), total)
    # Gradients against the transcription at the inputs' own precision: the L1 and max terms
    # have kinks (ties, e.g. saturated pixels where fused == vis), and a float64 reference would
    # put some of them on the other side.
    refs = [t.clone().cpu().requires_grad_() for t in (vis, ir, fused)]
    grads_ref = torch.autograd.grad(lref.fusion_loss(*refs, **kw)[0], refs)
    grads = torch.autograd.grad(total, ins)
    for name, a, b in zip(("vis", "ir", "fused"), grads, grads_ref):
        err = float((a.cpu().double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))
        assert err <= lim, f"{backend}: grad {name} rel err {err:.2e}"


@pytest.mark.parametrize("backend,device", SSIM)
@pytest.mark.parametrize("cir", [1, 3])
def test_fusion_loss_random(backend, device, cir):
    if _interp(backend, device):
        _check_fusion(*_fusion_inputs((1, 3, 12, 13), device, cir), backend, window_size=11)
        return
    _check_fusion(*_fusion_inputs((2, 3, 57, 63), device, cir, seed=cir), backend)
    _check_fusion(*_fusion_inputs((1, 3, 21, 30), device, cir, seed=5), backend, window_size=11,
                  max_w=3.0, consist_w=0.5, grad_w=7.0, ssim_w=2.0, ssim_ir_w=0.25, ir_compose=1.5, color_w=0.0)


@pytest.mark.parametrize("backend,device", [p for p in SSIM if not _interp(*p)])
def test_fusion_loss_real_images(data_dir, backend, device):
    vis, ir = _roadscene(data_dir, 5, ((1, 84), (2, 103)), "gray")  # 83 x 101, 1-channel ir
    mu = torch.rand(1, 1, *vis.shape[-2:], generator=torch.Generator().manual_seed(0))
    fused = ((1 - mu) * vis + mu * ir).clamp(-1, 1)  # saturated pixels: ties in the L1 terms
    _check_fusion(vis.to(device), ir.to(device), fused.to(device), backend)


def test_fusion_loss_ir_one_channel_is_repeated():
    vis, ir, fused = _fusion_inputs((1, 3, 30, 31), "cpu", cir=1)
    loss = hk.FusionLoss(window_size=11)
    torch.testing.assert_close(loss(vis, ir, fused), loss(vis, ir.repeat(1, 3, 1, 1), fused))


def test_fusion_loss_autocast_computes_in_float32():
    vis, ir, fused = _fusion_inputs((1, 3, 33, 35), "cpu", cir=1)
    loss = hk.FusionLoss(window_size=11)
    want = loss(vis, ir, fused)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(vis, ir, fused)
        got_bf = loss(vis.bfloat16(), ir.bfloat16(), fused.bfloat16())
    assert got.dtype == torch.float32 and got_bf.dtype == torch.float32
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_bf, want, atol=0.05, rtol=0.02)


def test_fusion_loss_weights_reach_their_terms():
    g = torch.Generator().manual_seed(3)
    vis, ir, fused = (torch.rand(1, c, 40, 40, generator=g, dtype=torch.float64) * 2 - 1 for c in (3, 1, 3))
    m = hk.FusionLoss(grad_w=3, color_w=0.5, backend="torch")
    total, terms = m(vis, ir, fused, return_terms=True)
    _, base = hk.FusionLoss(backend="torch")(vis, ir, fused, return_terms=True)
    # a weight scales its own term only (released defaults: grad 40, color 2)
    torch.testing.assert_close(terms["grad"], base["grad"] * 3 / 40)
    torch.testing.assert_close(terms["color"], base["color"] * 0.5 / 2)
    for k in ("max", "consist", "ssim"):
        torch.testing.assert_close(terms[k], base[k])
    torch.testing.assert_close(total, sum(terms.values()))
    assert "grad_w=3" in repr(m)


# ---------------------------------------------------------------------------------------------
# Argument errors name the argument


def test_bad_arguments():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="window_size"):
        hk.ssim(x, x, 0)
    with pytest.raises(TypeError, match="window_size"):
        hk.ssim(x, x, 2.5)
    with pytest.raises(TypeError, match="window_size"):
        hk.ssim(x, x, True)
    with pytest.raises(ValueError, match="sigma"):
        hk.ssim(x, x, 11, 0.0)
    with pytest.raises(ValueError, match="data_range"):
        hk.ssim(x, x, 11, 1.5, -1.0)
    with pytest.raises(ValueError, match="padding"):
        hk.ssim(x, x, padding="full")
    with pytest.raises(ValueError, match="y has shape"):
        hk.ssim(x, x[..., :15])
    with pytest.raises(TypeError, match="x must be a floating-point"):
        hk.ssim(x.to(torch.uint8), x.to(torch.uint8))
    with pytest.raises(TypeError, match="y has dtype"):
        hk.ssim(x, x.double())
    with pytest.raises(ValueError, match="x must have shape"):
        hk.ssim(x[0], x[0])
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        hk.ssim_loss(x, 3)
    with pytest.raises(ValueError, match="b has shape"):
        hk.gradient_max_loss(x, x[:, :1], x)
    with pytest.raises(TypeError, match="f must be a floating-point"):
        hk.gradient_max_loss(x, x, x.long())
    with pytest.raises(ValueError, match="window_size"):
        hk.FusionLoss(window_size=0)
    with pytest.raises(TypeError, match="grad_w"):
        hk.FusionLoss(grad_w="40")
    loss = hk.FusionLoss()
    with pytest.raises(ValueError, match="ir must have shape"):
        loss(x, x[:, :2], x)
    with pytest.raises(ValueError, match="vis must have 3 channels"):
        loss(x[:, :1], x[:, :1], x[:, :1])
    with pytest.raises(ValueError, match="fused has shape"):
        loss(x, x, x[..., :8])


# ---------------------------------------------------------------------------------------------
# torch.compile


def test_torch_compile_no_graph_break():
    x, y = _pair((1, 3, 20, 21), "cpu", seed=23)
    f = torch.compile(lambda a, b: hk.ssim_loss(a, b, 11, backend="torch") + hk.gradient_max_loss(a, b, a, backend="torch"),
                      fullgraph=True, backend="aot_eager")
    want = hk.ssim_loss(x, y, 11, backend="torch") + hk.gradient_max_loss(x, y, x, backend="torch")
    torch.testing.assert_close(f(x, y), want)
