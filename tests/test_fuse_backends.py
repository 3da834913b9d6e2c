"""Every backend that implements ``fuse`` (and the pyramid ops) against the reference.

Backends are discovered from the registry, so a new backend is tested as soon as it registers.
Tolerances come from the backend's own declaration (``hfkernels.core.backends.tolerance``).
"""
import pytest
import torch

import hfkernels as hk
from hfkernels.core import reference as ref
from hfkernels.core.backends import get_backend, tolerance
from hfkernels.core.fusion import max_levels

from .conftest import backend_device_pairs

FUSE = backend_device_pairs("fuse")
KERNELS = [p for p in FUSE if p[0] != "torch"]
# small shapes: the Triton interpreter is slow
SHAPES = [
    (1, 1, 1, 1), (1, 1, 2, 3), (1, 1, 5, 2), (2, 3, 7, 9), (1, 3, 16, 16), (2, 1, 33, 20), (1, 2, 24, 31),
]


def _inputs(shape, cir, dtype=torch.float32, device="cpu", seed=0):
    """Random vis (B,C,H,W), ir (B,cir,H,W), mu (B,1,H,W) in [0, 1], drawn in float64."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    vis = torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    ir = torch.rand(b, cir, h, w, generator=g, dtype=torch.float64)
    mu = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (vis, ir, mu)]


def _dtypes(backend, device):
    return [d for d in get_backend(backend).dtypes[torch.device(device).type]]


def test_some_kernel_backend_is_tested():
    # the point of this file is the backends other than the reference ("torch"): at least one
    # of them must run here, and the comparisons with the reference must be parametrized by it
    tested = [p for m in test_forward_matches_reference.pytestmark
              if m.args[0] == "backend,device" for p in m.args[1]]
    assert any(b != "torch" for b, _ in tested), f"no kernel backend is compared with the reference here (fuse runs on {FUSE})"


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("broadcast_ir", [True, False])
def test_forward_matches_reference(backend, device, shape, broadcast_ir):
    for dtype in _dtypes(backend, device):
        vis, ir, mu = _inputs(shape, 1 if broadcast_ir else shape[1], dtype, device)
        want = ref.fuse(vis.double(), ir.double(), mu.double())
        got = hk.fuse(vis, ir, mu, backend=backend)
        assert got.dtype == dtype and got.shape == vis.shape
        atol, rtol = tolerance(backend, dtype)
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("levels", [1, 2, 3, 5, 6])
def test_levels(backend, device, levels):
    vis, ir, mu = _inputs((1, 2, 29, 37), 1, torch.float32, device)
    want = ref.fuse(vis.double(), ir.double(), mu.double(), levels)
    got = hk.fuse(vis, ir, mu, levels, backend=backend)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_non_contiguous_inputs(backend, device):
    vis, ir, mu = _inputs((2, 3, 20, 26), 1, torch.float32, device)
    vis_nc = vis.transpose(-1, -2).contiguous().transpose(-1, -2)  # channels-last-like strides
    ir_nc = torch.stack([ir, ir], dim=-1)[..., 0]  # same values, strided
    mu_nc = mu.expand(2, 1, 20, 26)[:, :, :, :]
    mu_nc = torch.cat([mu_nc, mu_nc], dim=1)[:, :1]
    assert not vis_nc.is_contiguous() and not ir_nc.is_contiguous()
    want = ref.fuse(vis.double(), ir.double(), mu.double())
    got = hk.fuse(vis_nc, ir_nc, mu_nc, backend=backend)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("shape,cir", [((2, 3, 13, 10), 1), ((1, 2, 9, 16), 2), ((1, 1, 1, 1), 1)])
def test_gradients_match_reference(backend, device, shape, cir):
    vis, ir, mu = _inputs(shape, cir, torch.float32, device, seed=1)
    g = torch.rand(shape, generator=torch.Generator().manual_seed(2)).to(device)
    ins = [t.clone().requires_grad_() for t in (vis, ir, mu)]
    hk.fuse(*ins, backend=backend).backward(g)
    ref_ins = [t.double().clone().requires_grad_() for t in (vis, ir, mu)]
    ref.fuse(*ref_ins).backward(g.double())
    for name, a, b in zip(("vis", "ir", "mu"), ins, ref_ins):
        assert a.grad is not None and a.grad.shape == a.shape, name
        scale = b.grad.abs().max().clamp_min(1e-12)
        err = float(((a.grad.double() - b.grad).abs().max() / scale))
        assert err <= 1e-4, f"{backend} grad of {name}: relative error {err:.2e}"


@pytest.mark.parametrize("backend,device", [p for p in FUSE if torch.float64 in get_backend(p[0]).dtypes[p[1]]])
def test_gradcheck_float64(backend, device):
    vis, ir, mu = _inputs((1, 2, 7, 6), 1, torch.float64, device, seed=3)
    ins = tuple(t.requires_grad_() for t in (vis, ir, mu))
    # the Triton interpreter costs ~0.1 s a call: check one random projection instead of the
    # full Jacobian there (the reference-gradient tests above cover every entry)
    fast = backend == "triton" and device == "cpu"
    assert torch.autograd.gradcheck(lambda a, b, m: hk.fuse(a, b, m, 2, backend=backend), ins, fast_mode=fast)


@pytest.mark.parametrize("backend,device", FUSE)
def test_torch_compile_no_graph_break(backend, device):
    if backend == "triton" and device == "cpu":
        pytest.skip("torch.compile does not trace through the Triton interpreter")
    vis, ir, mu = _inputs((1, 3, 12, 11), 1, torch.float32, device)
    f = torch.compile(lambda a, b, m: hk.fuse(a, b, m, backend=backend), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(vis, ir, mu), hk.fuse(vis, ir, mu, backend=backend))


@pytest.mark.parametrize("backend,device", [p for p in FUSE if "laplacian_pyramid" in get_backend(p[0]).ops])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 9, 14), (1, 1, 32, 17)])
def test_pyramid_and_reconstruct(backend, device, shape):
    x = torch.rand(shape, dtype=torch.float64).float().to(device)
    levels = min(3, max_levels(*shape[-2:]))  # more than a 1x1 image has is refused
    want = ref.laplacian_pyramid(x.double(), levels)
    got = hk.laplacian_pyramid(x, levels, backend=backend)
    assert len(got) == levels + 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)
    if "reconstruct" in get_backend(backend).ops:
        torch.testing.assert_close(hk.reconstruct(got, backend=backend), x, atol=1e-5, rtol=1e-5)
