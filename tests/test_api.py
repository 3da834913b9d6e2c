"""Argument checking and backend selection of the public API."""
import json
import subprocess
import sys

import pytest
import torch

import hfkernels as hk
from hfkernels.core import ext as _ext
from hfkernels.core import reference as ref
from hfkernels.core.backends import BackendUnavailableError, select


def ins(b=1, c=3, h=8, w=9, cir=1, dtype=torch.float32):
    return torch.rand(b, c, h, w, dtype=dtype), torch.rand(b, cir, h, w, dtype=dtype), torch.rand(b, 1, h, w, dtype=dtype)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda v, i, m: (v[0], i, m), ValueError, "vis must have shape"),
        (lambda v, i, m: (v, i[0, 0], m), ValueError, "ir must have shape"),
        (lambda v, i, m: (v, i, m[:, :, None]), ValueError, "mu must have shape"),
        (lambda v, i, m: (v, i[:, :, :4], m), ValueError, "ir has spatial size"),
        (lambda v, i, m: (v, i, m[..., :5]), ValueError, "mu has spatial size"),
        (lambda v, i, m: (v, torch.cat([i, i]), m), ValueError, "ir has batch size"),
        (lambda v, i, m: (v, torch.cat([i, i], 1), m), ValueError, "ir must have 1 or 3 channels"),
        (lambda v, i, m: (v, i, torch.cat([m, m], 1)), ValueError, "mu must have 1 channel"),
        (lambda v, i, m: ((v * 255).to(torch.uint8), i, m), TypeError, "vis must be a floating-point"),
        (lambda v, i, m: (v, i.double(), m), TypeError, "ir has dtype"),
        (lambda v, i, m: (v, i, m.half()), TypeError, "mu has dtype"),
        (lambda v, i, m: (v.numpy(), i, m), TypeError, "vis must be a torch.Tensor"),
        (lambda v, i, m: (v, i, m[:0]), ValueError, "mu must not be empty"),
        (lambda v, i, m: (v, i, torch.rand(1, 1, 8, 9, device="meta")), ValueError, "mu is on meta"),
    ],
)
def test_fuse_argument_errors(mutate, exc, match):
    with pytest.raises(exc, match=match):
        hk.fuse(*mutate(*ins()))


@pytest.mark.parametrize("levels,exc", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError), ("4", TypeError)])
def test_levels_errors(levels, exc):
    with pytest.raises(exc, match="levels"):
        hk.fuse(*ins(), levels=levels)
    with pytest.raises(exc, match="levels"):
        hk.laplacian_pyramid(ins()[0], levels)
    with pytest.raises(exc, match="levels"):
        hk.fuse_color(*ins(), levels=levels)


def test_check_mu_range_and_nan():
    v, i, m = ins()
    hk.fuse(v, i, m, check=True)
    with pytest.raises(ValueError, match=r"mu must lie in \[0, 1\]"):
        hk.fuse(v, i, m + 1.5, check=True)
    m2 = m.clone()
    m2[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="mu contains NaN"):
        hk.fuse(v, i, m2, check=True)
    # unchecked, NaN propagates (documented) instead of raising
    assert torch.isnan(hk.fuse(v, i, m2)).any()
    # unchecked, mu outside [0,1] extrapolates linearly
    torch.testing.assert_close(hk.fuse(v, i, torch.full_like(m, 2.0)), 2 * i.expand_as(v) - v, atol=1e-5, rtol=1e-5)


def test_backend_argument():
    v, i, m = ins()
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        hk.fuse(v, i, m, backend="nope")
    with pytest.raises(BackendUnavailableError, match="'cuda' cannot run on cpu"):
        hk.fuse(v, i, m, backend="cuda")
    with pytest.raises(TypeError, match="backend must be a string"):
        hk.fuse(v, i, m, backend=3)
    torch.testing.assert_close(hk.fuse(v, i, m, backend="torch"), hk.fuse(v, i, m))


def test_env_var_selects_backend(monkeypatch):
    v, i, m = ins()
    # a preference: a backend that cannot run here gives way to the automatic choice
    monkeypatch.setenv("HFK_BACKEND", "cuda")
    assert select("fuse", "cpu", torch.float32)[0] in hk.available_backends("cpu")
    torch.testing.assert_close(hk.fuse(v, i, m), hk.fuse(v, i, m, backend="torch"), atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("HFK_BACKEND", "torch")
    assert select("fuse", "cpu", torch.float32)[0] == "torch"
    # an explicit argument wins over the environment
    monkeypatch.setenv("HFK_BACKEND", "cpu")
    assert select("fuse", "cpu", torch.float32, "torch")[0] == "torch"


def test_available_backends_and_status():
    names = hk.available_backends("cpu")
    assert "torch" in names and "cuda" not in names
    status = hk.backend_status("cpu")
    assert set(status) == {"triton", "cuda", "cpu", "torch"}
    for name, (ok, why) in status.items():
        assert isinstance(why, str) and why, name
        assert ok == (name in names)


def test_automatic_choice_prefers_kernels_on_cpu():
    # the built extension is the fast CPU path; without it the reference is all there is
    name, _ = select("fuse", "cpu", torch.float32)
    assert name == ("cpu" if _ext.ERROR is None else "torch")
    # half precision on CPU: only the reference accepts it, so it is chosen
    assert select("fuse", "cpu", torch.float16)[0] in ("torch",)


def test_unsupported_dtype_for_named_backend():
    if _ext.ERROR is not None:
        pytest.skip("the C++ extension is not built")
    with pytest.raises(TypeError, match="does not support dtype torch.float16"):
        hk.fuse(*ins(dtype=torch.float16), backend="cpu")


def test_reconstruct_errors():
    x = torch.rand(1, 1, 9, 9)
    pyr = hk.laplacian_pyramid(x, 2)
    with pytest.raises(TypeError, match="list of at least 2"):
        hk.reconstruct(x)
    with pytest.raises(ValueError, match=r"pyr\[1\] has shape"):
        hk.reconstruct([pyr[0], pyr[2], pyr[2]])


def test_fuse_color_errors_and_ir_luma():
    v, i, m = ins(c=3, cir=3)
    with pytest.raises(ValueError, match="vis_rgb must have 1 or 3 channels"):
        hk.fuse_color(torch.rand(1, 2, 8, 9), i, m)
    # a colourless visible image and mu = 1: the output is the infrared luma on every channel
    out = hk.fuse_color(v[:, :1].expand(-1, 3, -1, -1), i, torch.ones_like(m))
    torch.testing.assert_close(out, ref.luma(i).expand(-1, 3, -1, -1), atol=1e-5, rtol=0)


#: names hfkernels exports lazily -> the module that defines them (loaded on first access)
LAZY = {"ssim": "hfkernels.core.losses", "ssim_loss": "hfkernels.core.losses", "gradient_max_loss": "hfkernels.core.losses",
        "FusionLoss": "hfkernels.core.losses", "metrics": "hfkernels.metrics", "models": "hfkernels.guidance.models"}

_LAZY_PROBE = """
import json, sys
import hfkernels
lazy = json.loads(sys.argv[1])
modules = sorted(set(lazy.values()))
out = {"after_import": [m for m in modules if m in sys.modules], "values": {}}
for name, module in lazy.items():
    value = getattr(hfkernels, name)
    out["values"][name] = value is sys.modules[module] or value is getattr(sys.modules[module], name, None)
out["after_access"] = [m for m in modules if m in sys.modules]
print(json.dumps(out))
"""


def test_fuse_color_warns_about_0_255_inputs():
    import warnings

    vis, ir = torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16)
    mu = torch.full((1, 1, 16, 16), 0.5)
    with pytest.warns(UserWarning, match=r"vis_rgb holds values in \[.*\], not \[0, 1\].*255"):
        hk.fuse_color(vis * 255, ir, mu)
    with pytest.warns(UserWarning, match="ir holds values"):
        hk.fuse_color(vis, ir * 255, mu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hk.fuse_color(vis, ir, mu)  # [0, 1]: silent
        hk.fuse_color(vis * 255, ir, mu.requires_grad_())  # a training step is not checked


def test_lazy_exports():
    with pytest.raises(AttributeError):
        hk.does_not_exist
    assert set(LAZY) <= set(hk.__all__)
    # in a fresh interpreter: `import hfkernels` loads none of the modules behind the lazy names,
    # and each name, once accessed, is that module's object (or the module itself)
    res = subprocess.run([sys.executable, "-c", _LAZY_PROBE, json.dumps(LAZY)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"after_import": [], "values": dict.fromkeys(LAZY, True),
                   "after_access": sorted(set(LAZY.values()))}


def test_op_names_are_checked_where_they_are_used():
    from hfkernels.core import backends

    # a misspelt op fails when its module is imported (the decorator), not on some later call
    with pytest.raises(ValueError, match="unknown op 'fusee'"):
        backends.implements("fusee", "torch")
    with pytest.raises(ValueError, match="unknown backend 'tritn'"):
        backends.implements("fuse", "tritn")
    with pytest.raises(ValueError, match="unknown op 'gradient_maxx'"):
        select("gradient_maxx", "cpu", torch.float32)
    # every op of the list has at least the reference, and every registered op is in the list
    registered = {op for b in map(backends.get_backend, hk.available_backends("cpu")) for op in b.ops}
    assert registered == set(backends.OPS)
