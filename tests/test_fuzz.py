"""Property-based fuzzing (hypothesis) of every public op on every backend available here.

Each example draws shapes (1x1, 1xN, odd sizes, batches), dtypes, memory layouts (transposed,
strided, channels-last, batch-expanded), value kinds (random, zero, constant, binary, 8-bit
levels, wide ranges), levels, windows and value ranges -- and, in about one example in four, one
argument made invalid. The properties:

- an invalid argument raises a named error (ValueError, TypeError, BackendUnavailableError);
- a valid call returns the documented shape and dtype, finite where the inputs are finite, within
  the backend's declared tolerance (``hfkernels.core.backends.tolerance``) of the float64 reference,
  scaled by the inputs' magnitude and, for SSIM, by its conditioning (see ``ssim_slack``);
- first-order gradients (where drawn) match the reference's.

The Triton backend runs in its interpreter here, so it gets tiny shapes and fewer examples.
Example counts scale with the hypothesis profile (tests/conftest.py): ``ci`` by default (about a
minute on 2 cores, derandomized), ``--hypothesis-profile=long`` for a long local run.
"""
import math
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

import torch  # noqa: E402
from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import hfkernels as hk  # noqa: E402
from hfkernels import metrics as M  # noqa: E402
from hfkernels.core import loss_reference as lref  # noqa: E402
from hfkernels.core import reference as ref  # noqa: E402
from hfkernels.core.backends import BackendUnavailableError, get_backend, tolerance  # noqa: E402
from hfkernels.core.fusion import max_levels  # noqa: E402

from .conftest import FUZZ_COUNTS, backend_device_pairs  # noqa: E402

NAMED = (ValueError, TypeError, BackendUnavailableError)
F64 = torch.float64

#: examples per test = the profile's max_examples times this weight (by cost per example)
WEIGHTS = {
    ("fuse", "torch"): 3, ("fuse", "cpu"): 4, ("fuse", "triton"): 1, ("fuse_color", None): 2,
    ("pyramid", None): 2, ("heuristic", None): 2,
    ("ssim", "torch"): 3, ("ssim", "cpu"): 3, ("ssim", "triton"): 1,
    ("gradient_max", "torch"): 3, ("gradient_max", "cpu"): 3, ("gradient_max", "triton"): 1,
    ("FusionLoss", None): 1, ("evaluate", None): 3,
    ("weights file", None): 3, ("checkpoint json", None): 3, ("image file", None): 4,
}


def examples(op, backend=None) -> int:
    return max(1, round(settings.default.max_examples * WEIGHTS.get((op, backend), 1)))


#: (op, backend) -> [valid calls, invalid calls] run, reported at the end of the module
COUNTS: dict = {}


def run(op, backend, strategy, check):
    """Run ``check(case)`` over ``examples(op, backend)`` draws of ``strategy``; ``check``
    returns True where the case was invalid (an error was expected and raised)."""
    counts = COUNTS.setdefault(f"{op}[{backend}]" if backend else op, [0, 0])

    @settings(max_examples=examples(op, backend))
    @given(case=strategy)
    def inner(case):
        counts[bool(check(case))] += 1

    inner()


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    """Hand the counts to the session's terminal summary (tests/conftest.py), which shows them
    after the progress dots rather than among them."""
    yield
    if COUNTS:
        request.config.stash[FUZZ_COUNTS] = (settings.get_current_profile_name(), dict(COUNTS))


def tiny(backend):
    return backend == "triton"


def dtypes_of(backend, device="cpu"):
    return list(get_backend(backend).dtypes[torch.device(device).type])


# ---------------------------------------------------------------------------------------------
# Tensors

KINDS = ("rand", "rand", "rand", "zeros", "const", "binary", "levels")
LAYOUTS = ("contiguous", "contiguous", "transposed", "strided", "channels_last", "batch_expanded")


def make(shape, kind, seed, dtype, layout="contiguous", lo=0.0, hi=1.0, device="cpu"):
    """A (B, C, H, W) tensor of ``kind`` values in [lo, hi], stored with ``layout``."""
    g = torch.Generator().manual_seed(seed)
    if kind == "zeros":
        t = torch.zeros(shape, dtype=F64)
    elif kind == "const":
        t = torch.full(shape, float(torch.rand((), generator=g, dtype=F64)), dtype=F64)
    elif kind == "binary":
        t = (torch.rand(shape, generator=g, dtype=F64) > 0.5).to(F64)
    elif kind == "levels":
        t = torch.randint(0, 256, shape, generator=g).to(F64) / 255
    else:
        t = torch.rand(shape, generator=g, dtype=F64)
    t = (lo + (hi - lo) * t).to(device=device, dtype=dtype)
    if layout == "transposed":
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "strided":
        t = torch.stack([t, torch.zeros_like(t)], -1)[..., 0]
    elif layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "batch_expanded":
        t = t[:1].expand(t.shape)
    return t


@st.composite
def tensor_spec(draw, lo=0.0, hi=1.0):
    """(kind, seed, layout, lo, hi) for :func:`make`."""
    return draw(st.sampled_from(KINDS)), draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from(LAYOUTS)), lo, hi


def build(shape, spec, dtype, device="cpu"):
    kind, seed, layout, lo, hi = spec
    return make(shape, kind, seed, dtype, layout, lo, hi, device)


def mutation(*names):
    """None (a valid call) three times in four, else one of ``names``."""
    return st.sampled_from((None,) * 3 * len(names) + names)


def finite(*ts):
    return all(bool(torch.isfinite(t).all()) for t in ts)


def expect_error(fn, what) -> bool:
    try:
        fn()
    except NAMED:
        return True
    raise AssertionError(f"{what}: no ValueError/TypeError/BackendUnavailableError")


def close(got, want, atol, rtol, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    torch.testing.assert_close(got.detach().double().cpu(), want.detach().double().cpu(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def grads_close(got, want, dtype, what):
    """Gradients relative to the largest reference entry (as test_fuse_backends does)."""
    lim = {torch.float32: 1e-4, F64: 1e-9}.get(dtype)
    if lim is None:
        return  # half-precision gradients: covered by the value checks
    for i, (a, b) in enumerate(zip(got, want)):
        scale = float(b.abs().max().clamp_min(1e-12))
        err = float((a.double().cpu() - b).abs().max()) / max(scale, 1.0)
        assert err <= lim, f"{what}: gradient {i} off by {err:.2e} (relative)"


# ---------------------------------------------------------------------------------------------
# fuse


@st.composite
def fuse_cases(draw, backend, device):
    small = tiny(backend)
    b = draw(st.integers(1, 2 if small else 3))
    c = draw(st.integers(1, 3 if small else 4))
    h, w = (draw(st.integers(1, 6 if small else 24)) for _ in range(2))
    return dict(
        b=b, c=c, h=h, w=w, cir=draw(st.sampled_from([1, c])), dtype=draw(st.sampled_from(dtypes_of(backend, device))),
        levels=draw(st.one_of(st.integers(1, 7), st.sampled_from([10**6, 10**9]))),
        vis=draw(tensor_spec()), ir=draw(tensor_spec()),
        mu=draw(st.one_of(tensor_spec(), tensor_spec(-0.5, 1.5))),  # outside [0, 1]: extrapolates
        grad=(not small) and draw(st.booleans()),
        bad=draw(mutation("levels=0", "levels=2.0", "ir channels", "mu channels", "mu dtype", "mu size",
                          "ir batch", "vis 3-D", "empty", "int vis", "nan checked", "mu range checked",
                          "unsupported dtype")),
    )


def check_fuse(backend, device, case):
    b, c, h, w, dt = case["b"], case["c"], case["h"], case["w"], case["dtype"]
    vis = build((b, c, h, w), case["vis"], dt, device)
    ir = build((b, case["cir"], h, w), case["ir"], dt, device)
    mu = build((b, 1, h, w), case["mu"], dt, device)
    levels, bad, check = case["levels"], case["bad"], False
    note(f"shape {(b, c, h, w)} ir {case['cir']} {dt} levels {levels} bad {bad}")
    if bad is not None:
        if bad == "levels=0":
            levels = 0
        elif bad == "levels=2.0":
            levels = 2.0
        elif bad == "ir channels":
            ir = make((b, c + 1 if c > 1 else 2, h, w), "rand", 0, dt, device=device)
        elif bad == "mu channels":
            mu = torch.cat([mu, mu], 1)
        elif bad == "mu dtype":
            mu = mu.to(F64 if dt != F64 else torch.float32)
        elif bad == "mu size":
            mu = make((b, 1, h + 1, w), "rand", 0, dt, device=device)
        elif bad == "ir batch":
            ir = torch.cat([ir, ir])
        elif bad == "vis 3-D":
            vis = vis[0]
        elif bad == "empty":
            vis, ir, mu = vis[:0], ir[:0], mu[:0]
        elif bad == "int vis":
            vis = (vis * 255).to(torch.uint8)
        elif bad == "nan checked":
            mu, check = mu.clone(), True
            mu[0, 0, 0, 0] = float("nan")
        elif bad == "mu range checked":
            mu, check = mu + 2.0, True
        elif bad == "unsupported dtype":
            others = [d for d in (torch.float16, torch.bfloat16, F64) if d not in dtypes_of(backend, device)]
            if not others:
                bad = None  # this backend takes every dtype: a valid call after all
            else:
                vis, ir, mu = (t.to(others[0]) for t in (vis, ir, mu))
    if bad is not None:
        return expect_error(lambda: hk.fuse(vis, ir, mu, levels, backend=backend, check=check), f"fuse {bad}")
    ins = [t.detach().clone().requires_grad_() if case["grad"] else t for t in (vis, ir, mu)]
    got = hk.fuse(*ins, levels, backend=backend)
    assert got.dtype == dt and got.shape == vis.shape
    refs = [t.detach().double().cpu().requires_grad_() for t in (vis, ir, mu)]
    want = ref.fuse(*refs, levels)
    atol, rtol = tolerance(backend, dt)
    # linear in vis and ir with weights 1 - mu, mu: errors scale with both magnitudes
    scale = float(max(1.0, mu.abs().max(), (1 - mu).abs().max())) * float(max(1.0, vis.abs().max(), ir.abs().max()))
    close(got, want, atol * scale, rtol, f"fuse[{backend}]")
    assert finite(got)
    if case["grad"]:
        gout = make(got.shape, "rand", 7, dt, device=device)
        grads = torch.autograd.grad(got, ins, gout)
        grads_close(grads, torch.autograd.grad(want, refs, gout.double().cpu()), dt, f"fuse[{backend}] grad")


@pytest.mark.parametrize("backend,device", backend_device_pairs("fuse"))
def test_fuse(backend, device):
    run("fuse", backend, fuse_cases(backend, device), lambda case: check_fuse(backend, device, case))


# ---------------------------------------------------------------------------------------------
# fuse_color


@st.composite
def fuse_color_cases(draw):
    backend = draw(st.sampled_from([b for b, d in backend_device_pairs("fuse") if d == "cpu"]))
    small = tiny(backend)
    h, w = (draw(st.integers(1, 6 if small else 20)) for _ in range(2))
    return dict(
        backend=backend, b=draw(st.integers(1, 2)), h=h, w=w, c=draw(st.sampled_from([1, 3])),
        cir=draw(st.sampled_from([1, 3])), dtype=draw(st.sampled_from(dtypes_of(backend))),
        levels=draw(st.one_of(st.integers(1, 6), st.just(10**9))),
        vis=draw(tensor_spec()), ir=draw(tensor_spec()), mu=draw(tensor_spec()),
        bad=draw(mutation("vis channels", "ir channels", "levels=-1", "mu channels")),
    )


def check_fuse_color(case):
    backend, b, h, w, dt = case["backend"], case["b"], case["h"], case["w"], case["dtype"]
    vis = build((b, case["c"], h, w), case["vis"], dt)
    ir = build((b, case["cir"], h, w), case["ir"], dt)
    mu = build((b, 1, h, w), case["mu"], dt)
    levels, bad = case["levels"], case["bad"]
    note(f"{backend} vis {tuple(vis.shape)} ir {case['cir']} {dt} levels {levels} bad {bad}")
    if bad == "vis channels":
        vis = make((b, 2, h, w), "rand", 0, dt)
    elif bad == "ir channels":
        ir = make((b, 4, h, w), "rand", 0, dt)
    elif bad == "levels=-1":
        levels = -1
    elif bad == "mu channels":
        mu = torch.cat([mu, mu], 1)
    if bad is not None:
        return expect_error(lambda: hk.fuse_color(vis, ir, mu, levels, backend=backend), f"fuse_color {bad}")
    got = hk.fuse_color(vis, ir, mu, levels, backend=backend)
    assert got.dtype == dt and got.shape == vis.shape
    want = hk.fuse_color(vis.double(), ir.double(), mu.double(), levels, backend="torch")
    atol, rtol = tolerance(backend, dt)
    close(got, want, 4 * atol, rtol, f"fuse_color[{backend}]")  # colour transforms: a few more roundings
    assert finite(got) and float(got.min()) >= 0 and float(got.max()) <= 1


def test_fuse_color():
    run("fuse_color", None, fuse_color_cases(), check_fuse_color)


# ---------------------------------------------------------------------------------------------
# laplacian_pyramid and reconstruct (the reference backend implements them)


@st.composite
def pyramid_cases(draw):
    h, w = (draw(st.integers(1, 40)) for _ in range(2))
    return dict(
        b=draw(st.integers(1, 3)), c=draw(st.integers(1, 3)), h=h, w=w,
        dtype=draw(st.sampled_from(dtypes_of("torch"))), x=draw(tensor_spec(-2.0, 2.0)),
        levels=draw(st.one_of(*[st.integers(1, max_levels(h, w))] * 3, st.integers(max_levels(h, w) + 1, 10**9))),
        bad=draw(mutation("drop a level", "swap levels", "pyr dtype", "pyr tensor", "levels=True")),
    )


def check_pyramid(case):
    b, c, h, w, dt, levels = case["b"], case["c"], case["h"], case["w"], case["dtype"], case["levels"]
    x = build((b, c, h, w), case["x"], dt)
    note(f"{tuple(x.shape)} {dt} levels {levels} bad {case['bad']}")
    if case["bad"] == "levels=True":
        return expect_error(lambda: hk.laplacian_pyramid(x, True), "pyramid levels=True")
    if levels > max_levels(h, w):
        with pytest.raises(ValueError, match="levels"):
            hk.laplacian_pyramid(x, levels)
        return True
    pyr = hk.laplacian_pyramid(x, levels)
    want = ref.laplacian_pyramid(x.double(), levels)
    assert len(pyr) == levels + 1
    atol, rtol = tolerance("torch", dt)
    for k, (p, q) in enumerate(zip(pyr, want)):
        assert p.dtype == dt
        close(p, q, 2 * atol, rtol, f"pyramid level {k}")  # values up to 2 in magnitude
    bad = case["bad"]
    if bad is not None and not (bad in ("drop a level", "swap levels") and len(pyr) < 3):
        if bad == "drop a level":
            pyr = pyr[:1] + pyr[2:]
        elif bad == "swap levels":
            pyr = [pyr[1], pyr[0]] + pyr[2:]
        elif bad == "pyr dtype":
            pyr = pyr[:-1] + [pyr[-1].to(F64 if dt != F64 else torch.float32)]
        elif bad == "pyr tensor":
            pyr = x
        if not (bad == "swap levels" and pyr[0].shape == pyr[1].shape):
            return expect_error(lambda: hk.reconstruct(pyr), f"reconstruct {bad}")
    out = hk.reconstruct(pyr)
    assert out.shape == x.shape and out.dtype == dt and finite(out)
    # each level was rounded to dt once: the collapse adds those roundings up
    close(out, x.double(), 2 * (levels + 1) * atol, rtol, "reconstruct(laplacian_pyramid(x))")


def test_pyramid_and_reconstruct():
    run("pyramid", None, pyramid_cases(), check_pyramid)


# ---------------------------------------------------------------------------------------------
# heuristic_guidance and heuristic_blend


@st.composite
def heuristic_cases(draw):
    lo = draw(st.floats(-300, 300))
    span = draw(st.floats(1.0, 600))
    h, w = (draw(st.integers(1, 24)) for _ in range(2))
    return dict(
        b=draw(st.integers(1, 2)), c=draw(st.sampled_from([1, 3])), cir=draw(st.sampled_from([1, 3])), h=h, w=w,
        dtype=draw(st.sampled_from(dtypes_of("torch"))),
        vr=draw(st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (0, 255), (lo, lo + span)])),
        vis=draw(tensor_spec()), ir=draw(tensor_spec()), list_range=draw(st.booleans()),
        bad=draw(mutation("vis channels", "ir channels", "range (0, 0)", "range reversed", "range 'ab'",
                          "range nan", "range 3 values", "range None", "ir size")),
    )


def check_heuristic(case):
    b, c, h, w, dt = case["b"], case["c"], case["h"], case["w"], case["dtype"]
    lo, hi = case["vr"]
    vis = build((b, c, h, w), case["vis"][:3] + (lo, hi), dt)
    ir = build((b, case["cir"], h, w), case["ir"][:3] + (lo, hi), dt)
    vr = [lo, hi] if case["list_range"] else (lo, hi)
    bad = case["bad"]
    note(f"vis {tuple(vis.shape)} ir {case['cir']} {dt} range {vr} bad {bad}")
    if bad is not None:
        vr = {"range (0, 0)": (0.0, 0.0), "range reversed": (hi, lo), "range 'ab'": "ab",
              "range nan": (float("nan"), 1.0), "range 3 values": (0, 1, 2), "range None": None}.get(bad, vr)
        if bad == "vis channels":
            vis = make((b, 2, h, w), "rand", 0, dt)
        elif bad == "ir channels":
            ir = make((b, 4, h, w), "rand", 0, dt)
        elif bad == "ir size":
            ir = make((b, 1, h, w + 1), "rand", 0, dt)
        return all([expect_error(lambda: fn(vis, ir, vr), f"{fn.__name__} {bad}")
                    for fn in (hk.heuristic_guidance, hk.heuristic_blend)])
    wmap = hk.heuristic_guidance(vis, ir, vr)
    blend = hk.heuristic_blend(vis, ir, vr)
    assert wmap.shape == (b, 1, h, w) and wmap.dtype == dt
    assert blend.shape == vis.shape and blend.dtype == dt
    assert finite(wmap, blend) and float(wmap.min()) >= 0 and float(wmap.max()) <= 1
    atol, rtol = tolerance("torch", dt)
    # the map to [-1, 1] divides by hi - lo: rounding of the inputs' offset grows by this much
    kappa = max(1.0, abs(lo), abs(hi)) / (hi - lo)
    wd = tolerance("torch", torch.float32)[0] if dt in (torch.float16, torch.bfloat16) else atol
    close(wmap, ref.heuristic_guidance(vis.double(), ir.double(), (lo, hi)), atol + 10 * wd * kappa, rtol, "guidance")
    close(blend, ref.heuristic_blend(vis.double(), ir.double(), (lo, hi)),
          (atol + 10 * wd * kappa) * max(1.0, abs(lo), abs(hi)), rtol, "blend")


def test_heuristics():
    run("heuristic", None, heuristic_cases(), check_heuristic)


# ---------------------------------------------------------------------------------------------
# ssim


def ssim_slack(x, y, window, sigma, data_range, dtype):
    """Extra absolute error SSIM may have in ``dtype`` from its conditioning: the local variance
    E[x^2] - E[x]^2 cancels to about eps * max(x^2), which the ratio divides by C2 (plus C1 for
    the means) -- e.g. 2.6e-4 on a constant float32 image at data_range 1, measured."""
    eps = torch.finfo(dtype if dtype in (torch.float32, F64) else torch.float32).eps
    L = lref.released_data_range(x.double()) if data_range is None else data_range
    c1 = (0.01 * L) ** 2
    m2 = float(max(x.double().abs().max(), y.double().abs().max())) ** 2
    return 8 * eps * m2 / c1


@st.composite
def ssim_cases(draw, backend, device):
    small = tiny(backend)
    h, w = (draw(st.integers(1, 10 if small else 30)) for _ in range(2))
    scale = draw(st.sampled_from([1.0, 2.0, 255.0]))
    return dict(
        b=draw(st.integers(1, 2)), c=draw(st.integers(1, 2 if small else 3)), h=h, w=w,
        dtype=draw(st.sampled_from(dtypes_of(backend, device))), x=draw(tensor_spec(0.0, scale)),
        y=draw(tensor_spec(0.0, scale)), window=draw(st.integers(1, 8 if small else 15)),
        sigma=draw(st.floats(0.3, 5.0)), padding=draw(st.sampled_from(["valid", "same"])),
        data_range=draw(st.sampled_from([None, scale])), grad=(not small) and draw(st.booleans()),
        bad=draw(mutation("window_size=0", "window_size=2.5", "sigma=0", "sigma=nan", "padding='full'",
                          "data_range=-1", "y shape", "y dtype")),
    )


def check_ssim(backend, device, case):
    b, c, h, w, dt = case["b"], case["c"], case["h"], case["w"], case["dtype"]
    x = build((b, c, h, w), case["x"], dt, device)
    y = build((b, c, h, w), case["y"], dt, device)
    args = dict(window_size=case["window"], sigma=case["sigma"], data_range=case["data_range"], padding=case["padding"])
    bad = case["bad"]
    note(f"{tuple(x.shape)} {dt} {args} bad {bad}")
    if bad is not None:
        key, _, val = bad.partition("=")
        if key in args:
            args[key] = eval(val, {"nan": math.nan})  # noqa: S307 - the literals above
        elif bad == "y shape":
            y = make((b, c, h, w + 1), "rand", 0, dt, device=device)
        elif bad == "y dtype":
            y = y.to(F64 if dt != F64 else torch.float32)
        else:
            raise AssertionError(f"unknown mutation {bad}")
        return expect_error(lambda: hk.ssim(x, y, **args, backend=backend), f"ssim {bad}")
    ins = [t.detach().clone().requires_grad_() if case["grad"] else t for t in (x, y)]
    got = hk.ssim(*ins, **args, backend=backend)
    assert got.dim() == 0 and got.dtype == dt and finite(got)
    refs = [t.detach().double().cpu().requires_grad_() for t in (x, y)]
    want = lref.ssim(*refs, **args)
    atol, rtol = tolerance(backend, dt)
    slack = ssim_slack(x, y, args["window_size"], args["sigma"], args["data_range"], dt)
    close(got, want, atol + slack, rtol, f"ssim[{backend}]")
    if case["grad"] and slack < 1e-4:  # ill-conditioned gradients are as uncertain as the values
        grads_close(torch.autograd.grad(got, ins), torch.autograd.grad(want, refs), dt, f"ssim[{backend}] grad")


@pytest.mark.parametrize("backend,device", backend_device_pairs("ssim"))
def test_ssim(backend, device):
    run("ssim", backend, ssim_cases(backend, device), lambda case: check_ssim(backend, device, case))


# ---------------------------------------------------------------------------------------------
# gradient_max_loss


@st.composite
def gmax_cases(draw, backend, device):
    small = tiny(backend)
    h, w = (draw(st.integers(1, 8 if small else 30)) for _ in range(2))
    return dict(
        b=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), h=h, w=w,
        dtype=draw(st.sampled_from(dtypes_of(backend, device))),
        ts=[draw(tensor_spec(-1.0, 1.0)) for _ in range(3)], grad=(not small) and draw(st.booleans()),
        bad=draw(mutation("f shape", "a dtype", "b 3-D")),
    )


def check_gmax(backend, device, case):
    b, c, h, w, dt = case["b"], case["c"], case["h"], case["w"], case["dtype"]
    a, bb, f = (build((b, c, h, w), s, dt, device) for s in case["ts"])
    bad = case["bad"]
    note(f"{tuple(f.shape)} {dt} bad {bad}")
    if bad == "f shape":
        f = make((b, c, h + 1, w), "rand", 0, dt, device=device)
    elif bad == "a dtype":
        a = a.to(F64 if dt != F64 else torch.float32)
    elif bad == "b 3-D":
        bb = bb[0]
    if bad is not None:
        return expect_error(lambda: hk.gradient_max_loss(a, bb, f, backend=backend), f"gradient_max {bad}")
    ins = [t.detach().clone().requires_grad_() if case["grad"] else t for t in (a, bb, f)]
    got = hk.gradient_max_loss(*ins, backend=backend)
    assert got.dim() == 0 and got.dtype == dt and finite(got)
    want = lref.gradient_max(*(t.double().cpu() for t in (a, bb, f)))
    atol, rtol = tolerance(backend, dt)
    close(got, want, 8 * atol, rtol, f"gradient_max[{backend}]")  # Sobel sums of values up to 1: up to 8
    if case["grad"]:
        # The loss has kinks at ties (|Sobel f| == max(...), |Sobel a| == |Sobel b|) that the
        # precision decides: 8-bit levels tie in float64 but not always in float32. The fixed
        # evaluation order makes ties agree within one dtype, so compare in the input's dtype.
        refs = [t.detach().clone().cpu().requires_grad_() for t in (a, bb, f)]
        grads_close(torch.autograd.grad(got, ins), torch.autograd.grad(lref.gradient_max(*refs), refs), dt,
                    f"gradient_max[{backend}] grad")


@pytest.mark.parametrize("backend,device", backend_device_pairs("gradient_max"))
def test_gradient_max(backend, device):
    run("gradient_max", backend, gmax_cases(backend, device), lambda case: check_gmax(backend, device, case))


# ---------------------------------------------------------------------------------------------
# FusionLoss


@st.composite
def fusion_loss_cases(draw):
    backend = draw(st.sampled_from(sorted({b for b, d in backend_device_pairs("ssim") if d == "cpu"})))
    small = tiny(backend)
    h, w = (draw(st.integers(1, 8 if small else 24)) for _ in range(2))
    return dict(
        backend=backend, b=draw(st.integers(1, 2)), h=h, w=w, cir=draw(st.sampled_from([1, 3])),
        dtype=draw(st.sampled_from([torch.float32, F64])), window=draw(st.integers(1, 48)),
        ts=[draw(tensor_spec(-1.0, 1.0)) for _ in range(3)],
        bad=draw(mutation("vis channels", "ir channels", "fused shape")),
    )


def check_fusion_loss(case):
    backend, b, h, w, dt = case["backend"], case["b"], case["h"], case["w"], case["dtype"]
    vis = build((b, 3, h, w), case["ts"][0], dt)
    ir = build((b, case["cir"], h, w), case["ts"][1], dt)
    fused = build((b, 3, h, w), case["ts"][2], dt)
    bad = case["bad"]
    note(f"{backend} {tuple(vis.shape)} ir {case['cir']} {dt} window {case['window']} bad {bad}")
    loss = hk.FusionLoss(window_size=case["window"], backend=backend)
    if bad == "vis channels":
        vis = vis[:, :2]
    elif bad == "ir channels":
        ir = make((b, 2, h, w), "rand", 0, dt)
    elif bad == "fused shape":
        fused = fused[..., :-1] if w > 1 else torch.cat([fused, fused], -1)
    if bad is not None:
        return expect_error(lambda: loss(vis, ir, fused), f"FusionLoss {bad}")
    total, terms = loss(vis, ir, fused, return_terms=True)
    want, want_terms = lref.fusion_loss(vis.double(), ir.double(), fused.double(), window_size=case["window"])
    assert total.dim() == 0 and finite(total)
    atol, rtol = tolerance(backend, dt)
    # two SSIM terms (weight 1 each, images in [-1, 1]: data range 1 or 2) dominate the error
    slack = 2 * ssim_slack(vis, fused, 1, 1.5, None, dt) + 100 * atol
    close(total, want, slack, max(rtol, 2e-5), f"FusionLoss[{backend}]")
    for k in want_terms:
        close(terms[k], want_terms[k], slack, max(rtol, 2e-5), f"FusionLoss[{backend}] term {k}")


def test_fusion_loss():
    run("FusionLoss", None, fusion_loss_cases(), check_fusion_loss)


# ---------------------------------------------------------------------------------------------
# metrics.evaluate

#: the range each metric's value must lie in (scores of images in [0, 1])
RANGES = {
    "EN": (-1e-6, 8.0 + 1e-6), "MI": (-1e-9, 16.0 + 1e-9), "VIF": (0.0, math.inf), "Qabf": (0.0, 1.0),
    "SSIM": (-2.0, 2.0 + 1e-9), "SD": (0.0, 127.5 + 1e-9), "SF": (0.0, math.inf), "AG": (0.0, math.inf),
    "SCD": (-2.0 - 1e-9, 2.0 + 1e-9), "CC": (-1.0 - 1e-9, 1.0 + 1e-9), "PSNR": (-math.inf, math.inf),
    "MSE": (0.0, 255.0**2), "Nabf": (0.0, 1.0),
}


@st.composite
def evaluate_cases(draw):
    size = st.one_of(st.integers(1, 12), st.integers(41, 56))
    return dict(
        b=draw(st.integers(1, 2)), h=draw(size), w=draw(size),
        cs=[draw(st.sampled_from([1, 3])) for _ in range(3)], dtype=draw(st.sampled_from([torch.float32, F64])),
        ts=[draw(tensor_spec()) for _ in range(3)], protocol=draw(st.sampled_from(["paper", "standard"])),
        bad=draw(mutation("fused out of range", "fused nan", "ir size", "vis channels", "protocol", "names")),
    )


def check_evaluate(case):
    b, h, w, dt = case["b"], case["h"], case["w"], case["dtype"]
    vis, ir, fused = (build((b, c, h, w), s, dt) for c, s in zip(case["cs"], case["ts"]))
    bad, protocol, names = case["bad"], case["protocol"], None
    if min(h, w) < 41:  # VIF needs 41x41, SSIM 11x11: both raise a named error below that
        names = [n for n in M.METRICS if n != "VIF" and (n != "SSIM" or min(h, w) >= 11)]
        for n in set(M.METRICS) - set(names):
            expect_error(lambda: M.evaluate(vis, ir, fused, [n], protocol), f"evaluate {n} on {h}x{w}")
    note(f"{b}x{case['cs']}x{h}x{w} {dt} {protocol} bad {bad}")
    if bad is not None:
        if bad == "fused out of range":
            fused = fused * 2 + 0.01
        elif bad == "fused nan":
            fused = fused.clone()
            fused[-1, -1, -1, -1] = float("nan")
        elif bad == "ir size":
            ir = make((b, 1, h + 1, w), "rand", 0, dt)
        elif bad == "vis channels":
            vis = make((b, 2, h, w), "rand", 0, dt)
        elif bad == "protocol":
            protocol = "matlab"
        elif bad == "names":
            names = ["EN", "bogus"]
        return expect_error(lambda: M.evaluate(vis, ir, fused, names, protocol), f"evaluate {bad}")
    r = M.evaluate(vis, ir, fused, names, protocol)
    for n, v in r.items():
        assert v.shape == (b,) and v.dtype == F64, n
        for i, x in enumerate(v.tolist()):
            if n == "PSNR" and r.get("MSE", v)[i] == 0:
                assert x == math.inf, f"PSNR of identical images is {x}, documented +inf"
                continue
            lo, hi = RANGES[n]
            assert math.isfinite(x) and lo <= x <= hi, f"{n}[{i}] = {x} (allowed [{lo}, {hi}])"
    if b > 1:  # the batch is a loop of singles
        one = M.evaluate(vis[1:], ir[1:], fused[1:], names, protocol)
        for n in r:
            torch.testing.assert_close(r[n][1:], one[n], atol=1e-9, rtol=1e-9, msg=lambda m: f"{n}: {m}")


def test_evaluate():
    run("evaluate", None, evaluate_cases(), check_evaluate)


# ---------------------------------------------------------------------------------------------
# Loaded files (issue 21): weights files, checkpoint records and image files are untrusted input.
# Property: each loads as what it claims to be, or raises one named error (ValueError / TypeError /
# FileNotFoundError) whose message names the file -- never a traceback from safetensors, json,
# load_state_dict or PIL, never a silent load of NaN, int or misshapen weights.

FILE_ERRORS = (ValueError, TypeError, FileNotFoundError)


def _tiny_state():
    from hfkernels.guidance.models import GuidanceUNet

    torch.manual_seed(0)
    m = GuidanceUNet(preset="tiny", guide="residual")
    return m.config(), {k: v.detach().clone() for k, v in m.state_dict().items()}


TINY = None

WEIGHT_MUTATIONS = (None, None, "drop", "extra", "shape", "int8", "bool", "nan", "inf", "float16", "bytes",
                    "truncate", "empty", "config base", "config str", "config missing", "config json",
                    "config guide", "config extra")


@st.composite
def weights_cases(draw):
    return {"mutation": draw(st.sampled_from(WEIGHT_MUTATIONS)), "pick": draw(st.integers(0, 10**6)),
            "value": draw(st.sampled_from([0, -1, 65, 3000, 10**9, "12", None, 1.5, True]))}


def _write_weights(path, case):
    import json as _json

    from safetensors.torch import save

    global TINY
    TINY = TINY or _tiny_state()
    config, sd = dict(TINY[0]), dict(TINY[1])
    names = sorted(sd)
    k = names[case["pick"] % len(names)]
    mut = case["mutation"] or ""
    if mut == "drop":
        del sd[k]
    elif mut == "extra":
        sd["x.weight"] = torch.zeros(3)
    elif mut == "shape":
        sd[k] = torch.zeros(*(s + 1 for s in sd[k].shape)) if sd[k].dim() else torch.zeros(2)
    elif mut in ("int8", "bool"):
        sd[k] = sd[k].to(torch.int8 if mut == "int8" else torch.bool)
    elif mut in ("nan", "inf") and sd[k].is_floating_point() and sd[k].numel():
        sd[k] = sd[k].clone()
        sd[k].view(-1)[case["pick"] % sd[k].numel()] = float(mut)
    elif mut == "float16":
        sd = {n: (v.half() if v.is_floating_point() else v) for n, v in sd.items()}
    elif mut.startswith("config"):
        if mut == "config base":
            config["base"] = case["value"]
        elif mut == "config str":
            config["in_channels"] = str(config["in_channels"])
        elif mut == "config missing":
            config.pop("guide")
        elif mut == "config guide":
            config["guide"] = case["value"]
        elif mut == "config extra":
            config["depth"] = case["value"]
    meta = {"format": "hfkernels-checkpoint-1",
            "config": "{not json" if mut == "config json" else _json.dumps(config)}
    blob = save(sd, metadata=meta)
    if mut == "bytes":
        blob = bytes(np_rng(case["pick"]).integers(0, 256, 512, dtype="uint8"))
    elif mut == "truncate":
        blob = blob[: case["pick"] % len(blob)]
    elif mut == "empty":
        blob = b""
    path.write_bytes(blob)


def np_rng(seed):
    import numpy as np

    return np.random.default_rng(seed)


def expect_file_error(fn, path, what) -> bool:
    """True if ``fn()`` raised a named error naming ``path``; False if it returned."""
    try:
        fn()
    except FILE_ERRORS as e:
        assert Path(path).name in str(e), f"{what}: error does not name {path}: {e}"
        return True
    return False


def check_weights(case):
    import tempfile

    from hfkernels.guidance.checkpoint import load_model

    note(str(case))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        _write_weights(path, case)
        failed = expect_file_error(lambda: load_model(path), path, case["mutation"])
        mut = case["mutation"]
        must_fail = mut not in (None, "float16", "config missing", "nan", "inf") or (
            mut in ("nan", "inf") and TINY[1][sorted(TINY[1])[case["pick"] % len(TINY[1])]].is_floating_point())
        if mut == "config base":
            must_fail = case["value"] != TINY[0]["base"]
        if mut == "config guide":
            must_fail = case["value"] not in ("residual", "scratch")
        assert failed == must_fail, f"{mut}: loaded={not failed}, expected failure={must_fail}"
        return failed


def test_weights_files():
    run("weights file", None, weights_cases(), check_weights)


RECORD_NAMES = ("model.safetensors", "../model.safetensors", "/etc/passwd", "sub/model.safetensors", "", ".",
                "..", "link.safetensors", "missing.safetensors")


@st.composite
def checkpoint_json_cases(draw):
    fields = {"format": st.just("hfkernels-checkpoint-1"),
              "epoch": st.one_of(st.integers(-2, 5), st.text(max_size=3), st.none(), st.booleans(), st.floats()),
              "model": st.one_of(st.sampled_from(RECORD_NAMES), st.integers(), st.none(), st.lists(st.integers(), max_size=2)),
              "optimizer": st.one_of(st.none(), st.sampled_from(RECORD_NAMES)),
              "extra": st.one_of(st.just({}), st.integers(), st.text(max_size=3))}
    record = {"format": "hfkernels-checkpoint-1", "epoch": draw(st.integers(0, 5)), "model": "model.safetensors"}
    # one field in three made hostile, one in six dropped; the rest stays a valid record
    for k, v in fields.items():
        roll = draw(st.integers(0, 5))
        if roll < 2:
            record[k] = draw(v)
        elif roll == 2:
            record.pop(k, None)
    shape = draw(st.sampled_from(("object", "object", "object", "list", "text", "broken", "empty", "binary")))
    return {"record": record, "shape": shape}


def check_checkpoint_json(case):
    import json as _json
    import tempfile

    from hfkernels.guidance.checkpoint import load_checkpoint

    note(str(case))
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d) / "run"
        run_dir.mkdir()
        _write_weights(run_dir / "model.safetensors", {"mutation": None, "pick": 0, "value": 0})
        (Path(d) / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
        (run_dir / "link.safetensors").symlink_to(Path(d) / "model.safetensors")
        (run_dir / "sub").mkdir()
        rec, shape = case["record"], case["shape"]
        text = {"object": _json.dumps(rec), "list": _json.dumps([rec]), "text": '"hello"',
                "broken": _json.dumps(rec)[:-1], "empty": "", "binary": None}[shape]
        path = run_dir / "checkpoint.json"
        path.write_bytes(b"\xff\xfe\x00" if text is None else text.encode())
        failed = expect_file_error(lambda: load_checkpoint(run_dir, optimizer=False), "checkpoint.json", shape)
        ok_record = (shape == "object" and rec.get("model") == "model.safetensors"
                     and isinstance(rec.get("epoch"), int) and not isinstance(rec.get("epoch"), bool)
                     and rec["epoch"] >= 0)
        assert failed != ok_record, f"{case}: loaded={not failed}"
        return failed


def test_checkpoint_json():
    run("checkpoint json", None, checkpoint_json_cases(), check_checkpoint_json)


IMAGE_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK")
IMAGE_FORMATS = {".png": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"), ".tif": ("1", "L", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"),
                 ".bmp": ("1", "L", "P", "RGB"), ".jpg": ("L", "RGB", "CMYK"), ".webp": ("RGB", "RGBA")}


@st.composite
def image_file_cases(draw):
    ext = draw(st.sampled_from(sorted(IMAGE_FORMATS)))
    return {"ext": ext, "mode": draw(st.sampled_from(IMAGE_FORMATS[ext])), "h": draw(st.integers(1, 40)),
            "w": draw(st.integers(1, 40)), "seed": draw(st.integers(0, 2**31 - 1)),
            "read": draw(st.sampled_from(("rgb", "gray", "keep"))),
            "damage": draw(st.sampled_from((None, None, None, "truncate", "garbage", "empty")))}


def check_image_file(case):
    import tempfile

    import numpy as np
    from PIL import Image

    from hfkernels.io import read_image

    note(str(case))
    h, w, mode = case["h"], case["w"], case["mode"]
    rng = np_rng(case["seed"])
    if mode in ("I;16", "I"):
        arr = rng.integers(0, 65536, (h, w)).astype(np.uint16 if mode == "I;16" else np.int32)
        im = Image.fromarray(arr, mode) if mode == "I;16" else Image.fromarray(arr)
    elif mode == "F":
        im = Image.fromarray(rng.random((h, w)).astype(np.float32))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x{case['ext']}"
        try:
            im.save(path)
        except (OSError, KeyError, ValueError):
            return True  # this PIL cannot write the combination: nothing to read
        if case["damage"] == "truncate":
            path.write_bytes(path.read_bytes()[: max(1, len(path.read_bytes()) // 3)])
        elif case["damage"] == "garbage":
            path.write_bytes(bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
        elif case["damage"] == "empty":
            path.write_bytes(b"")
        try:
            t = read_image(path, case["read"])
        except ValueError as e:
            assert path.name in str(e), f"error does not name the file: {e}"
            assert case["damage"] is not None, f"an undamaged {mode} {case['ext']} is unreadable: {e}"
            return True
        want_c = 3 if case["read"] == "rgb" else 1 if case["read"] == "gray" else None
        assert t.dtype == torch.float32 and t.dim() == 3 and tuple(t.shape[1:]) == (h, w), tuple(t.shape)
        assert want_c is None and t.shape[0] in (1, 3) or t.shape[0] == want_c, (case["read"], tuple(t.shape))
        assert bool(torch.isfinite(t).all()) and float(t.min()) >= 0 and float(t.max()) <= 1, (t.min(), t.max())
        if mode == "I;16" and case["damage"] is None:
            # 16-bit samples keep their levels (item 4: once saturated to white)
            want = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 65535)
            torch.testing.assert_close(t[0], want, atol=1e-6, rtol=0)
        return False


def test_image_files():
    run("image file", None, image_file_cases(), check_image_file)
