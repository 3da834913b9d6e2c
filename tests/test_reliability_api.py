"""Reliability of the public API under hostile but fair arguments: bounded work for any
``levels``, double backward on every backend, validated heuristic inputs, ``HFK_BACKEND`` as a
preference."""
import pytest
import torch

import hfkernels as hk
from hfkernels.core import reference as ref
from hfkernels.core.backends import (
    BackendUnavailableError,
    env_preference,
    get_backend,
    select,
)
from hfkernels.core.fusion import max_levels

from .conftest import backend_device_pairs

FUSE = backend_device_pairs("fuse")
SSIM = backend_device_pairs("ssim")
GMAX = backend_device_pairs("gradient_max")


def rand(*shape, dtype=torch.float64, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def literal_fuse(vis, ir, mu, levels):
    """The reference's formula with every level computed, 1x1 ones included (no cap)."""
    a = ref.laplacian_pyramid(vis, levels)
    b = ref.laplacian_pyramid(ir.expand_as(vis), levels)
    return ref.reconstruct([(1 - ref.resize(mu, ak.shape[-2:])) * ak + ref.resize(mu, ak.shape[-2:]) * bk
                            for ak, bk in zip(a, b)])


# -- levels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,most", [(1, 1, 1), (2, 1, 1), (1, 3, 2), (3, 3, 2), (8, 8, 3), (9, 2, 4), (480, 640, 10)])
def test_max_levels(h, w, most):
    assert max_levels(h, w) == most
    # the deepest pyramid the code builds ends at 1x1 (or, for a 1x1 image, one level of it),
    # and its level before the last is larger: one more level would only repeat 1x1
    pyr = hk.laplacian_pyramid(torch.rand(1, 1, h, w), most)
    assert tuple(pyr[-1].shape[-2:]) == (1, 1)
    assert most == 1 or tuple(pyr[-2].shape[-2:]) != (1, 1)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 7), (5, 3), (8, 8), (9, 16)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_levels_past_1x1_change_nothing(h, w, dtype):
    # the cap is silent because the skipped 1x1 levels are no-ops of the literal formula
    vis, ir, mu = (rand(2, c, h, w, dtype=dtype, seed=s) for s, c in enumerate((3, 1, 1)))
    want = literal_fuse(vis, ir, mu, max_levels(h, w) + 5)
    eps = torch.finfo(dtype).eps  # the extra levels' rounding: at most one ulp of [0, 1] data
    for levels in (max_levels(h, w), max_levels(h, w) + 1, 10**9):
        torch.testing.assert_close(ref.fuse(vis, ir, mu, levels), want, atol=2 * eps, rtol=0)
        api_tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(hk.fuse(vis, ir, mu, levels), want, atol=api_tol, rtol=0)


@pytest.mark.parametrize("backend,device", FUSE)
def test_huge_levels_reach_backends_capped(backend, device, monkeypatch):
    seen = []
    impl = get_backend(backend).ops["fuse"]
    monkeypatch.setitem(get_backend(backend).ops, "fuse", lambda v, i, m, lv: seen.append(lv) or impl(v, i, m, lv))
    x = rand(1, 1, 8, 8).float().to(device)
    want = hk.fuse(x, x, x, 3, backend=backend)
    for levels in (4, 10**9, 2**70):
        torch.testing.assert_close(hk.fuse(x, x, x, levels, backend=backend), want, atol=1e-6, rtol=0)
    assert hk.fuse_color(x.expand(1, 3, 8, 8), x, x, 100_000, backend=backend).shape == (1, 3, 8, 8)
    assert set(seen) == {3}


def test_pyramid_levels_past_1x1_are_refused():
    x = rand(2, 1, 8, 5)
    assert len(hk.laplacian_pyramid(x, 3)) == 4
    for levels in (4, 10**9):
        with pytest.raises(ValueError, match=rf"levels={levels} is more than a 8x5 image has: at most 3"):
            hk.laplacian_pyramid(x, levels)
    with pytest.raises(ValueError, match="at most 1"):
        hk.laplacian_pyramid(rand(1, 1, 1, 1), 2)


# -- double backward ---------------------------------------------------------------------------


def _skip_without_float64(backend, device):
    """Second derivatives are compared in float64: a backend that refuses it on ``device`` (the
    CUDA extension) is skipped, with the reason."""
    if torch.float64 not in get_backend(backend).dtypes.get(torch.device(device).type, ()):
        pytest.skip(f"backend {backend!r} does not take float64 on {device}")


def _second_order_fuse(backend, device, dtype=torch.float64):
    v, i, m = (rand(1, c, 6, 5, dtype=dtype, seed=s).to(device).requires_grad_() for s, c in enumerate((2, 1, 1)))
    (gv,) = torch.autograd.grad(hk.fuse(v, i, m, 2, backend=backend).pow(2).sum(), v, create_graph=True)
    return torch.autograd.grad(gv.sum(), (v, i, m))


@pytest.mark.parametrize("backend,device", FUSE)
def test_fuse_double_backward_matches_reference(backend, device):
    # a regression case: the cpu backend used to return zeros here (with only a UserWarning)
    _skip_without_float64(backend, device)
    got = _second_order_fuse(backend, device)
    want = _second_order_fuse("torch", "cpu")
    for g, w in zip(got, want):
        assert float(w.abs().max()) > 1e-3  # non-trivial
        torch.testing.assert_close(g.cpu(), w, atol=1e-10, rtol=1e-10)


def _second_order_loss(fn, backend, device):
    x, y, f = (rand(2, 1, 7, 6, seed=s).to(device).requires_grad_() for s in range(3))
    (gx,) = torch.autograd.grad(fn(x, y, f, backend), x, create_graph=True)
    return torch.autograd.grad((gx * gx).sum(), (x, y, f), allow_unused=True, materialize_grads=True)


LOSSES = {
    "ssim_valid": lambda x, y, f, b: hk.ssim(x, y * f, window_size=4, backend=b),
    "ssim_same": lambda x, y, f, b: hk.ssim(x, y * f, window_size=5, padding="same", backend=b),
    "gradient_max": lambda x, y, f, b: hk.gradient_max_loss(y, f, x * y + f, backend=b),
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("backend,device", sorted(set(SSIM) | set(GMAX)))
def test_loss_double_backward_matches_reference(loss, backend, device):
    op = "gradient_max" if loss == "gradient_max" else "ssim"
    if op not in get_backend(backend).ops:
        pytest.skip(f"{backend} does not implement {op}")
    _skip_without_float64(backend, device)
    fn = LOSSES[loss]
    got = _second_order_loss(fn, backend, device)
    want = _second_order_loss(fn, "torch", "cpu")
    assert any(float(w.abs().max()) > 1e-6 for w in want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend,device", [p for p in FUSE if p[0] != "triton"])
def test_gradgradcheck(backend, device):
    # the Triton interpreter makes gradgradcheck slow; its second derivatives are compared with
    # the reference above
    _skip_without_float64(backend, device)
    v, i, m = (rand(1, 1, 4, 5, seed=s).to(device).requires_grad_() for s in range(3))
    assert torch.autograd.gradgradcheck(lambda a, b, c: hk.fuse(a, b, c, 2, backend=backend), (v, i, m), fast_mode=True)
    x, y = (rand(1, 1, 5, 5, seed=s).to(device).requires_grad_() for s in range(2))
    assert torch.autograd.gradgradcheck(lambda a, b: hk.ssim(a, b, window_size=3, backend=backend), (x, y),
                                        fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda a, b: hk.gradient_max_loss(a, b, a * b, backend=backend), (x, y),
                                        fast_mode=True)


@pytest.mark.parametrize("backend,device", FUSE)
def test_first_order_backward_keeps_the_kernels(backend, device, monkeypatch):
    # create_graph=False must not route through the (slower) differentiable reference
    import hfkernels.ops._contracts as contracts

    def boom(*a, **k):
        raise AssertionError("first-order backward used the double-backward path")

    monkeypatch.setattr(contracts, "differentiable_vjp", boom)
    dtype = torch.float64 if torch.float64 in get_backend(backend).dtypes[torch.device(device).type] else torch.float32
    v = rand(1, 1, 6, 6, dtype=dtype).to(device).requires_grad_()
    hk.fuse(v, v.detach(), v.detach(), backend=backend).sum().backward()
    assert v.grad is not None and float(v.grad.abs().sum()) > 0


# -- heuristic inputs --------------------------------------------------------------------------


def _hv(c=3, cir=1, h=8, w=9):
    return rand(1, c, h, w), rand(1, cir, h, w, seed=1)


@pytest.mark.parametrize("fn", [hk.heuristic_guidance, hk.heuristic_blend])
@pytest.mark.parametrize(
    "vis,ir,kw,exc,match",
    [
        (rand(1, 2, 8, 8), rand(1, 1, 8, 8), {}, ValueError, "vis must have 1 or 3 channels, got 2"),
        (rand(1, 3, 8, 8), rand(1, 4, 8, 8), {}, ValueError, "ir must have 1 or 3 channels, got 4"),
        (rand(1, 1, 8, 8), rand(2, 1, 8, 8), {}, ValueError, "ir has shape"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 7), {}, ValueError, "ir has shape"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 8).float(), {}, TypeError, "ir has dtype"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 8), {"value_range": (0.0, 0.0)}, ValueError, r"value_range .*low < high"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 8), {"value_range": (1.0, 0.0)}, ValueError, r"value_range .*low < high"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 8), {"value_range": (0.0, float("inf"))}, ValueError,
         "value_range must be finite"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 8), {"value_range": "ab"}, TypeError, "value_range must be a pair"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 8), {"value_range": (0, "1")}, TypeError, "value_range must be a pair"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 8), {"value_range": (0, 1, 2)}, ValueError, "value_range must be a pair"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 8), {"value_range": torch.tensor([0.0, 1.0])}, TypeError, "value_range"),
        (rand(1, 1, 8, 8), rand(1, 1, 8, 8), {"value_range": 1.0}, TypeError, "value_range must be a pair"),
    ],
)
def test_heuristic_argument_errors(fn, vis, ir, kw, exc, match):
    with pytest.raises(exc, match=match):
        fn(vis, ir, **kw)


def test_heuristic_value_range_accepts_lists_and_ints():
    vis, ir = _hv()
    w = hk.heuristic_guidance(vis, ir)
    torch.testing.assert_close(hk.heuristic_guidance(vis * 255, ir * 255, [0, 255]), w)


@pytest.mark.parametrize("c,cir", [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_heuristic_blend_has_the_shape_of_vis(c, cir):
    vis, ir = _hv(c, cir)
    out = hk.heuristic_blend(vis, ir)
    assert out.shape == vis.shape
    # a 3-channel ir meets a 1-channel vis through its luma
    want = hk.heuristic_blend(vis, ref.luma(ir)) if (c, cir) == (1, 3) else None
    if want is not None:
        torch.testing.assert_close(out, want)
    w = hk.heuristic_guidance(vis, ir)
    assert w.shape == (1, 1, 8, 9) and 0 <= float(w.min()) and float(w.max()) <= 1


# -- HFK_BACKEND -------------------------------------------------------------------------------


def test_env_backend_bogus_names_the_variable(monkeypatch):
    monkeypatch.setenv("HFK_BACKEND", "bogus")
    with pytest.raises(ValueError, match="HFK_BACKEND='bogus' names no backend"):
        hk.fuse(*_hv(1, 1), torch.rand(1, 1, 8, 9, dtype=torch.float64))
    # an explicit argument is not affected by the variable
    hk.fuse(*_hv(1, 1), torch.rand(1, 1, 8, 9, dtype=torch.float64), backend="torch")
    assert "names no backend" in env_preference("cpu")["error"]


def test_env_backend_is_a_preference(monkeypatch):
    if "cpu" not in hk.available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    monkeypatch.setenv("HFK_BACKEND", "cpu")
    x = rand(1, 1, 9, 9)
    # ops the extension lacks, and dtypes it does not take, fall back to the automatic choice
    torch.testing.assert_close(hk.reconstruct(hk.laplacian_pyramid(x, 2)), x)
    assert select("laplacian_pyramid", "cpu", torch.float64)[0] == "torch"
    assert select("fuse", "cpu", torch.float16)[0] == "torch"
    assert hk.fuse(x.half(), x.half(), x.half()).dtype == torch.float16
    assert select("fuse", "cpu", torch.float32)[0] == "cpu"  # where it can run, it is used
    # ... and an explicit backend= stays strict
    with pytest.raises(TypeError, match="does not support dtype torch.float16"):
        hk.fuse(x.half(), x.half(), x.half(), backend="cpu")
    with pytest.raises(BackendUnavailableError, match="does not implement 'laplacian_pyramid'"):
        hk.laplacian_pyramid(x, 2, backend="cpu")
    fb = {(op, dt): (used, why) for op, dts, used, why in env_preference("cpu")["fallbacks"] for dt in dts}
    assert fb[("laplacian_pyramid", torch.float32)] == ("torch", "'cpu' does not implement 'laplacian_pyramid'")
    assert fb[("fuse", torch.float16)][0] == "torch" and "takes only float32, float64" in fb[("fuse", torch.float16)][1]
    assert ("fuse", torch.float32) not in fb


def test_env_backend_unavailable_on_device_falls_back(monkeypatch):
    monkeypatch.setenv("HFK_BACKEND", "cuda")
    assert select("fuse", "cpu", torch.float32)[0] in hk.available_backends("cpu")
    assert "cannot run on cpu" in env_preference("cpu")["unavailable"]


def test_info_reports_env_fallbacks(monkeypatch, capsys):
    from hfkernels.cli import main

    monkeypatch.setenv("HFK_BACKEND", "torch")
    assert main(["info"]) == 0
    assert "HFK_BACKEND=torch: used for every op and dtype" in capsys.readouterr().out
    monkeypatch.setenv("HFK_BACKEND", "bogus")
    assert main(["info"]) == 0
    assert "HFK_BACKEND='bogus' names no backend" in capsys.readouterr().out
    if "cpu" in hk.available_backends("cpu"):
        monkeypatch.setenv("HFK_BACKEND", "cpu")
        assert main(["info"]) == 0
        out = capsys.readouterr().out
        assert "HFK_BACKEND=cpu is a preference" in out
        assert "laplacian_pyramid" in out and "does not implement 'laplacian_pyramid'" in out
    monkeypatch.delenv("HFK_BACKEND")
    assert main(["info"]) == 0
    assert "HFK_BACKEND" not in capsys.readouterr().out
