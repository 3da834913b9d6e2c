"""Triton-specific tests of the fused pyramid fusion (hfkernels/ops/fuse_triton.py).

The generic comparison with the reference lives in test_fuse_backends.py. Here: the GPU tile
shapes (forced small, so tiles straddle planes and level borders exactly as on a GPU), the
backward against the reference in float64 for odd sizes / all levels / broadcast ir, a strided
incoming gradient, what forward saves for backward, the op registration (schema, fake impl,
autograd) and — in a subprocess without the interpreter — that every kernel variant compiles
for an NVIDIA GPU. Shapes are tiny: on CPU these kernels run in Triton's interpreter.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import hfkernels as hk
from hfkernels.core import reference as ref
from hfkernels.core.backends import triton_interpreting

ft = pytest.importorskip("hfkernels.ops.fuse_triton")
if ft.triton is None or "triton" not in hk.available_backends("cpu" if triton_interpreting() else None):
    pytest.skip("the triton backend cannot run here", allow_module_level=True)

DEV = "cpu" if triton_interpreting() else "cuda"


def _inputs(shape, cir, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    ts = [torch.rand(b, c, h, w, generator=g, dtype=torch.float64),
          torch.rand(b, cir, h, w, generator=g, dtype=torch.float64),
          torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)]
    return [t.to(device=DEV, dtype=dtype) for t in ts]


def _grads(fn, ins, g):
    ins = [t.detach().clone().requires_grad_() for t in ins]
    out = fn(*ins)
    out.backward(g)
    return out.detach(), [t.grad for t in ins]


def _assert_float64_matches_reference(ins, levels, g, tol, grad_rtol):
    """The Triton fuse of float64 ``ins`` (vis, ir, mu) and its gradients for the incoming
    gradient ``g`` (B, C, H, W) equal the reference's: value within ``tol`` (absolute and
    relative), each input's gradient within ``tol`` absolute and ``grad_rtol`` relative."""
    out, grads = _grads(lambda a, b, m: hk.fuse(a, b, m, levels, backend="triton"), ins, g)
    want, want_grads = _grads(lambda a, b, m: ref.fuse(a, b, m, levels), ins, g)
    torch.testing.assert_close(out, want, atol=tol, rtol=tol)
    for name, a, b in zip(("vis", "ir", "mu"), grads, want_grads):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=tol, rtol=grad_rtol, msg=f"grad of {name}")


@pytest.fixture
def gpu_tiles(monkeypatch):
    """Force the small tiles a GPU launch uses (8 x 16 here), so one level spans many tiles."""
    monkeypatch.setattr(ft._TILES, "shape", lambda rows, cols: (8, 16))


@pytest.mark.parametrize("shape,cir,levels", [
    ((2, 3, 13, 19), 1, 3),   # odd sizes in both dims, broadcast ir, planes straddle tiles
    ((1, 2, 18, 33), 2, 2),   # even H, odd W, per-channel ir, several column tiles
])
def test_gpu_tile_shapes_forward_and_backward(gpu_tiles, shape, cir, levels):
    g = torch.rand(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(DEV)
    _assert_float64_matches_reference(_inputs(shape, cir, seed=4), levels, g, tol=1e-10, grad_rtol=1e-10)


@pytest.mark.parametrize("shape,cir,levels", [
    ((1, 1, 1, 1), 1, 6),     # every level 1x1: each up is 2x2 -> 1x1 bilinear
    ((1, 3, 5, 3), 1, 1),     # a single level, broadcast ir summed over 3 channels
    ((2, 1, 11, 6), 1, 6),    # more levels than halvings: the top levels are 1x1
])
def test_backward_float64_matches_reference(shape, cir, levels):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(DEV)
    _assert_float64_matches_reference(_inputs(shape, cir, seed=6), levels, g, tol=1e-12, grad_rtol=1e-10)


def test_strided_incoming_gradient():
    # out.sum() sends back an expanded gradient (all strides 0)
    vis, ir, mu = (t.requires_grad_() for t in _inputs((1, 2, 6, 5), 1, torch.float32, seed=8))
    hk.fuse(vis, ir, mu, 2, backend="triton").sum().backward()
    rv, ri, rm = (t.detach().double().requires_grad_() for t in (vis, ir, mu))
    ref.fuse(rv, ri, rm, 2).sum().backward()
    for a, b in ((vis, rv), (ir, ri), (mu, rm)):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-5, rtol=1e-4)


def test_constant_mu_is_a_per_pixel_mix():
    vis, ir, _ = _inputs((1, 3, 9, 14), 1, torch.float32, seed=9)
    mu = torch.full((1, 1, 9, 14), 0.25, device=DEV)
    got = hk.fuse(vis, ir, mu, 4, backend="triton")
    torch.testing.assert_close(got, 0.75 * vis + 0.25 * ir, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_backward(dtype, tol):
    ins = _inputs((1, 2, 7, 10), 1, dtype, seed=10)
    g = torch.rand((1, 2, 7, 10), generator=torch.Generator().manual_seed(11)).to(DEV, dtype)
    out, grads = _grads(lambda a, b, m: hk.fuse(a, b, m, 3, backend="triton"), ins, g)
    assert out.dtype == dtype and all(t.dtype == dtype for t in grads)
    want, want_grads = _grads(lambda a, b, m: ref.fuse(a, b, m, 3), [t.double() for t in ins], g.double())
    torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol)
    for a, b in zip(grads, want_grads):
        scale = float(b.abs().max())
        assert float((a.double() - b).abs().max()) <= tol * max(scale, 1.0)


def test_saved_buffer_holds_the_coarse_gaussian_levels():
    # what forward keeps for backward: G_1..G_L of ir - vis, packed, nothing at full resolution
    vis, ir, mu = _inputs((2, 2, 9, 7), 1, seed=12)
    out, gbuf = ft.fuse_triton_fwd(vis, ir, mu, 3)
    d = ir - vis
    levels = []
    for _ in range(3):
        d = ref.down(d)
        levels.append(d.reshape(-1))
    torch.testing.assert_close(gbuf, torch.cat(levels), atol=1e-12, rtol=1e-12)
    assert gbuf.numel() < vis.numel() // 2


def test_op_registration():
    vis, ir, mu = _inputs((1, 2, 5, 4), 1, seed=13)
    for check in ("test_schema", "test_autograd_registration", "test_faketensor"):
        torch.library.opcheck(ft.fuse_triton_fwd, (vis, ir, mu, 2), test_utils=check)
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fv, fi, fm = torch.empty(2, 3, 33, 20), torch.empty(2, 1, 33, 20), torch.empty(2, 1, 33, 20)
        out, gbuf = ft.fuse_triton_fwd(fv, fi, fm, 4)
        assert out.shape == fv.shape and gbuf.numel() == 2 * 3 * (17 * 10 + 9 * 5 + 5 * 3 + 3 * 2)


_COMPILE_SCRIPT = textwrap.dedent("""
    import itertools
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from hfkernels.ops import fuse_triton as ft

    def compile_(kernel, ptr, consts):
        sig = {n: "constexpr" if n in consts else (ptr if n.endswith("_ptr") else "i32") for n in kernel.arg_names}
        triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32))

    t = dict(BH=4, BW=64)  # the GPU launcher's tile for wide levels
    compile_(ft._down_kernel, "*bf16", dict(SUB=True, BLEND=True, ACC64=False, C=1, **t))
    compile_(ft._down_kernel, "*fp32", dict(SUB=False, BLEND=False, ACC64=False, **t))
    compile_(ft._up_blend_kernel, "*fp16", dict(FIRST=True, FIX_H=True, FIX_W=False, ACC64=False, **t))
    compile_(ft._up_blend_kernel, "*fp32", dict(FIRST=False, FIX_H=False, FIX_W=True, ACC64=False, **t))
    compile_(ft._up_adjoint_kernel, "*bf16", dict(FIRST=True, FIX_H=True, FIX_W=True, ACC64=False, **t))
    compile_(ft._up_adjoint_kernel, "*fp32", dict(FIRST=False, FIX_H=False, FIX_W=False, ACC64=False, **t))
    compile_(ft._down_adjoint_kernel, "*fp32", dict(TOP=True, FIX_H=False, FIX_W=False, ACC64=False, **t))
    compile_(ft._down_adjoint_kernel, "*fp32", dict(TOP=False, FIX_H=True, FIX_W=False, ACC64=False, **t))
    compile_(ft._final_kernel, "*bf16", dict(LEVELS=3, IR_BCAST=True, FIX_H=True, FIX_W=False, ACC64=False, B=1, H=1, **t))
    compile_(ft._final_kernel, "*fp64", dict(LEVELS=2, IR_BCAST=False, FIX_H=False, FIX_W=True, ACC64=True, **t))
    compile_(ft._down_adjoint_kernel, "*fp64", dict(TOP=False, FIX_H=True, FIX_W=True, ACC64=True, **t))
    print("compiled")
""")


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The interpreter accepts code the compiler rejects: compile every kernel (sm_90, PTX and
    cubin; no GPU needed) in a fresh interpreter-free process. Ints equal to 1 are also passed
    as constants, as Triton may specialise them."""
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception as e:
        pytest.skip(f"Triton's NVIDIA backend is unavailable: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and ("ptxas" in res.stderr and shutil.which("ptxas") is None and "No such file" in res.stderr):
        pytest.skip("ptxas is not available")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-4000:]
