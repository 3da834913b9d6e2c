"""Tests specific to the C++ extension loss ops (``hfkernels/ops/loss_ext.py``).

The generic backend tests (tests/test_losses.py) compare every backend with the reference; this
file covers what is particular to the extension: the raw ``hfkernels_ext::*`` ops (schemas, fake
and autograd registrations), the float32 tap skipping, the clamp and tie conventions in the
gradient, both CPU instruction-set paths, thread-count independence and the CUDA kernels
against the CPU ones where a GPU is present.
"""
import os
import subprocess
import sys

import pytest
import torch

import hfkernels as hk
from hfkernels.core import loss_reference as LR
from hfkernels.core.backends import get_backend
from hfkernels.core.reference import gaussian_taps
from hfkernels.ops._contracts import kept_taps, ssim_autograd_kept

_cpu = get_backend("cpu")
pytestmark = pytest.mark.skipif(
    not _cpu.available("cpu")[0] or "ssim" not in _cpu.ops,
    reason="C++ extension hfkernels._C not built",
)


def _ssim(x, y, w, padding="valid", sigma=1.5, L=2.0):
    return _cpu.ops["ssim"](x, y, w, sigma, (0.01 * L) ** 2, (0.03 * L) ** 2, padding)


def _window(w, sigma=1.5, dtype=torch.float32):
    """The raw ops' window arguments (taps, lo, window_size), as the "cpu" backend passes them."""
    taps, lo = kept_taps(w, sigma, dtype)
    return list(taps), lo, w


def _pair(shape, dtype, seed=0, corr=0.6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    y = corr * x + (1 - corr) * (torch.rand(shape, generator=g, dtype=dtype) * 2 - 1)
    return x.requires_grad_(), y.requires_grad_()


def _value_and_grads(fn, x, y, seed=1):
    v = fn(x, y)
    g = torch.randn(v.shape, generator=torch.Generator().manual_seed(seed), dtype=v.dtype).to(v.device)
    return (v, *torch.autograd.grad(v, (x, y), g))


CASES = [  # (H, W, window, padding)
    (20, 23, 7, "valid"),
    (20, 23, 6, "same"),  # even window: off-centre
    (17, 19, 11, "same"),
    (31, 40, 11, "valid"),
    (60, 64, 48, "valid"),  # float32 drops the taps below float32 resolution
    (50, 49, 48, "same"),
    (5, 7, 1, "valid"),
    (12, 12, 12, "valid"),  # window == image: one output pixel
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("H,W,w,padding", CASES)
def test_ssim_matches_dense_reference(H, W, w, padding, dtype):
    x, y = _pair((2, 3, H, W), dtype)
    got = _value_and_grads(lambda a, b: _ssim(a, b, w, padding), x, y)
    ref = _value_and_grads(lambda a, b: LR.ssim_per_image(a, b, w, 1.5, 2.0, padding), x, y)
    vtol = 1e-12 if dtype == torch.float64 else 2e-6
    gtol = 1e-10 if dtype == torch.float64 else 1e-5  # relative to the largest gradient
    torch.testing.assert_close(got[0], ref[0], atol=vtol, rtol=0)
    for g, r in zip(got[1:], ref[1:]):
        torch.testing.assert_close(g, r, atol=gtol * r.abs().max().item(), rtol=0)


def test_kept_taps_rule():
    # One rule for every backend: drop the outer taps below half an ulp of the centre tap.
    full = gaussian_taps(48, 1.5)
    for dtype, n in ((torch.float32, 17), (torch.float64, 25)):
        taps, lo = kept_taps(48, 1.5, dtype)
        assert (len(taps), lo) == (n, 24 - n // 2)
        assert taps == tuple(full[lo : lo + n].tolist())
        cut = float(full[24]) * torch.finfo(dtype).eps / 2
        assert min(taps) >= cut and float(full[lo - 1]) < cut and float(full[lo + n]) < cut


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_raw_op_applies_the_taps_it_is_given(padding):
    # Arbitrary taps at an offset inside a window of 5: the kernels must use exactly these.
    x, y = _pair((2, 2, 9, 11), torch.float64, seed=4)
    taps, lo, w = [0.2, 0.5, 0.3], 1, 5
    same = padding == "same"
    got = _value_and_grads(
        lambda a, b: torch.ops.hfkernels_ext.ssim_forward(a, b, taps, lo, w, 1e-4, 9e-4, same, True)[0], x, y
    )
    ref = _value_and_grads(lambda a, b: ssim_autograd_kept(a, b, taps, lo, w, 1e-4, 9e-4, padding), x, y)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)


def test_ssim_non_contiguous_and_sigma():
    x0, y0 = _pair((2, 9, 11, 3), torch.float64)
    x, y = x0.permute(0, 3, 1, 2), y0.permute(0, 3, 1, 2)
    got = _value_and_grads(lambda a, b: _ssim(a, b, 5, "same", sigma=0.8), x, y)
    ref = _value_and_grads(lambda a, b: LR.ssim_per_image(a, b, 5, 0.8, 2.0, "same"), x, y)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_ssim_constant_images_give_one(dtype, padding):
    # Rounding makes E[x^2] - mu^2 slightly negative here; the clamps must keep SSIM at exactly 1.
    x = torch.full((2, 3, 30, 40), 0.3, dtype=dtype, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    v = _ssim(x, y, 11, padding)
    assert torch.equal(v, torch.ones_like(v))
    gx, gy = torch.autograd.grad(v.sum(), (x, y))
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    assert gx.abs().max() < 1e-6 and gy.abs().max() < 1e-6


def test_ssim_flat_regions_follow_clamp_conventions():
    # Piecewise-constant images put many pixels on the clamps' kinks (variance 0, covariance at
    # its bound); the gradient must follow torch.clamp's conventions like the reference.
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(1, 2, 24, 24, generator=g, dtype=torch.float64) * 3).floor() / 3
    y = x.clone()
    y[:, :, :12] = 0.5
    x.requires_grad_(), y.requires_grad_()
    got = _value_and_grads(lambda a, b: _ssim(a, b, 5, "same"), x, y)
    ref = _value_and_grads(lambda a, b: LR.ssim_per_image(a, b, 5, 1.5, 2.0, "same"), x, y)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("w,padding", [(4, "same"), (5, "valid"), (9, "valid"), (3, "same")])
def test_ssim_gradcheck(w, padding):
    x, y = _pair((1, 2, 9, 10), torch.float64, seed=5)
    assert torch.autograd.gradcheck(lambda a, b: _ssim(a, b, w, padding), (x, y))


def test_gradient_max_matches_reference_and_ties():
    gm = _cpu.ops["gradient_max"]
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(7)
        # Small integers: many exact ties between |Sobel a| and |Sobel b|, and zero responses.
        for make in (
            lambda: torch.randint(-2, 3, (2, 2, 6, 7), generator=g).to(dtype),
            lambda: torch.randn(2, 3, 9, 11, generator=g, dtype=dtype),
            lambda: torch.randn(1, 1, 1, 5, generator=g, dtype=dtype),  # a single row
        ):
            a, b, f = (make().requires_grad_() for _ in range(3))
            v, r = gm(a, b, f), LR.gradient_max(a, b, f)
            assert v.shape == ()
            torch.testing.assert_close(v, r, atol=1e-12 if dtype == torch.float64 else 1e-6, rtol=1e-6)
            for p, q in zip(torch.autograd.grad(v, (a, b, f)), torch.autograd.grad(r, (a, b, f))):
                torch.testing.assert_close(p, q, atol=1e-12 if dtype == torch.float64 else 1e-8, rtol=1e-6)


def test_gradient_max_gradcheck():
    g = torch.Generator().manual_seed(11)
    a, b, f = (torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(_cpu.ops["gradient_max"], (a, b, f))


def test_raw_ops_opcheck():
    ops = torch.ops.hfkernels_ext
    x, y = _pair((1, 2, 8, 9), torch.float32)
    for same in (False, True):
        torch.library.opcheck(ops.ssim_forward, (x, y, *_window(3), 1e-4, 9e-4, same, True))
    a, b, f = (torch.randn(1, 2, 5, 6, requires_grad=True) for _ in range(3))
    torch.library.opcheck(ops.gradient_max_forward, (a, b, f))


def test_coefficients_only_saved_when_needed_and_recomputed_if_missing():
    ops = torch.ops.hfkernels_ext
    x, y = _pair((1, 2, 12, 13), torch.float64)
    win = _window(5, dtype=torch.float64)
    _, coefs = ops.ssim_forward(x.detach(), y.detach(), *win, 1e-4, 9e-4, False, False)
    assert coefs.numel() == 0
    # A forward that did not save (save_coefs=False) still differentiates: the backward recomputes.
    v, _ = ops.ssim_forward(x, y, *win, 1e-4, 9e-4, False, False)
    got = torch.autograd.grad(v.sum(), (x, y))
    v2 = _ssim(x, y, 5, L=1.0)
    ref = torch.autograd.grad(v2.sum(), (x, y))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bad_arguments_raise():
    ops = torch.ops.hfkernels_ext
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(RuntimeError, match="same shape"):
        ops.ssim_forward(x, torch.rand(1, 1, 8, 9), *_window(3), 1e-4, 9e-4, False, False)
    with pytest.raises(RuntimeError, match="window_size must be >= 1"):
        ops.ssim_forward(x, x, [1.0], 0, 0, 1e-4, 9e-4, False, False)
    with pytest.raises(RuntimeError, match="larger than the image"):
        ops.ssim_forward(x, x, *_window(9), 1e-4, 9e-4, False, False)
    with pytest.raises(RuntimeError, match="do not fit in a window"):
        ops.ssim_forward(x, x, [0.5, 0.5], 2, 3, 1e-4, 9e-4, False, False)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.ssim_forward(x.half(), x.half(), *_window(3), 1e-4, 9e-4, False, False)
    with pytest.raises(RuntimeError, match="same shape"):
        ops.gradient_max_forward(x, x, torch.rand(1, 1, 8, 7))
    # the public function checks the padding before any backend runs
    with pytest.raises(ValueError, match="padding"):
        hk.ssim(x, x, 3, padding="reflect", backend="cpu")


def test_results_do_not_depend_on_thread_count():
    x, y = _pair((1, 3, 40, 50), torch.float32)
    old = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out.append(_value_and_grads(lambda a, b: _ssim(a, b, 11, "same"), x, y))
    finally:
        torch.set_num_threads(old)
    for other in out[1:]:
        for a, b in zip(out[0], other):
            assert torch.equal(a, b)


_BASELINE_SCRIPT = """
import torch, hfkernels
from hfkernels.core.backends import get_backend
ssim = get_backend("cpu").ops["ssim"]
g = torch.Generator().manual_seed(0)
x = (torch.rand(2, 3, 37, 45, generator=g) * 2 - 1).requires_grad_()
y = (torch.rand(2, 3, 37, 45, generator=g) * 2 - 1).requires_grad_()
out = []
for w, pad in ((11, "valid"), (48 // 2, "same"), (6, "same")):
    v = ssim(x, y, w, 1.5, 4e-4, 36e-4, pad)
    out += [v.detach(), *torch.autograd.grad(v.sum(), (x, y))]
torch.save(out, {path!r})
"""


def test_baseline_and_avx2_paths_agree(tmp_path):
    # The SSIM filters are compiled for the baseline ISA and for AVX2+FMA; HFK_CPU_ISA=baseline
    # forces the former. Both must give the same results up to float32 rounding.
    res = {}
    for isa in ("baseline", "auto"):
        path = str(tmp_path / f"{isa}.pt")
        env = dict(os.environ, HFK_CPU_ISA=isa, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT.format(path=path)], env=env, check=True)
        res[isa] = torch.load(path)
    for a, b in zip(res["baseline"], res["auto"]):
        torch.testing.assert_close(a, b, atol=1e-6 * b.abs().max().item(), rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    cuda = get_backend("cuda")
    if not cuda.available("cuda")[0]:
        pytest.skip(cuda.available("cuda")[1])
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    for H, W, w, padding in CASES:
        x, y = _pair((2, 3, H, W), torch.float32)
        ref = _value_and_grads(lambda a, b: _ssim(a, b, w, padding), x, y)
        xc = x.detach().to("cuda", dtype).requires_grad_()
        yc = y.detach().to("cuda", dtype).requires_grad_()
        got = _value_and_grads(
            lambda a, b: cuda.ops["ssim"](a, b, w, 1.5, 4e-4, 36e-4, padding), xc, yc
        )
        torch.testing.assert_close(got[0].float().cpu(), ref[0], atol=tol, rtol=tol)
        for g, r in zip(got[1:], ref[1:]):
            scale = r.abs().max().item()
            torch.testing.assert_close(g.float().cpu(), r, atol=tol * scale * 10, rtol=0)
    a, b, f = (torch.randn(2, 3, 9, 11) for _ in range(3))
    ref = LR.gradient_max(a, b, f)
    got = cuda.ops["gradient_max"](*(t.to("cuda", dtype) for t in (a, b, f)))
    torch.testing.assert_close(got.float().cpu(), ref, atol=tol, rtol=tol)
