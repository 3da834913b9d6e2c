"""Extension-specific tests of the C++ ("cpu") and CUDA ("cuda") fuse backends.

The generic comparisons against the reference live in test_fuse_backends.py; here: the CPU fast
paths on larger even sizes, float64 exactness, operator registration (opcheck), error handling,
the CUDA backend where a GPU exists, and an nvcc compile of every CUDA source (CI has nvcc but
no GPU, so a CUDA compile error cannot land).
"""
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import hfkernels as hk
from hfkernels.core import ext as _ext
from hfkernels.core import reference as ref
from hfkernels.core.backends import get_backend

from .test_fuse_backends import _inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_ext = pytest.mark.skipif(not (_ext.ERROR is None), reason=f"C++ extension not built ({_ext.ERROR})")
needs_cuda = pytest.mark.skipif(
    not ((_ext.ERROR is None) and _ext.HAS_CUDA and torch.cuda.is_available()),
    reason="needs the extension built with CUDA and a CUDA device",
)


def _grads(fn, ins, g):
    ins = [t.detach().clone().requires_grad_() for t in ins]
    fn(*ins).backward(g)
    return [t.grad for t in ins]


# ---------------------------------------------------------------------------------------------
# CUDA sources compile (no GPU needed)


CU_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


def _load_setup():
    # setup.py's own choices (C++ standard, architectures), so the check compiles what ships.
    spec = importlib.util.spec_from_file_location("hfk_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # setup() runs only under __main__
    return mod


@pytest.mark.parametrize("src", CU_SOURCES, ids=[os.path.basename(s) for s in CU_SOURCES])
def test_cuda_source_compiles_with_nvcc(src, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: CUDA sources cannot be compile-checked here")
    setup_py = _load_setup()
    cuda_home = setup_py.find_cuda_home(torch.version.cuda or "") or os.path.dirname(
        os.path.dirname(os.path.realpath(nvcc))
    )
    archs = setup_py.nvcc_arch_flags(setup_py.cuda_arch_list(torch, cuda_home))
    obj = tmp_path / (os.path.basename(src) + ".o")
    cmd = [nvcc, "-c", *setup_py.nvcc_flags(torch), *archs, src, "-o", str(obj)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    assert obj.stat().st_size > 0


def _ops_in(blocks_re: str, entry_re: str, files) -> set[str]:
    """Op names that ``entry_re`` finds inside the ``{...}`` blocks ``blocks_re`` opens."""
    found = set()
    for path in files:
        text = open(path, encoding="utf-8").read()
        for block in re.finditer(blocks_re + r"\s*\{(.*?)\n\}", text, re.S):
            found.update(re.findall(entry_re, block.group(1)))
    return found


def test_there_are_cuda_sources():
    # every op of the extension's schema has a CUDA kernel registered in csrc/cuda, and nothing
    # else is registered there (a schema op without one would fail only at run time on a GPU)
    every = glob.glob(os.path.join(ROOT, "csrc", "**", "*.c*"), recursive=True)
    schema = _ops_in(r"TORCH_LIBRARY(?:_FRAGMENT)?\(hfkernels_ext,\s*\w+\)", r'\.def\(\s*"(\w+)\(', every)
    cuda_files = [p for p in every if os.sep + "cuda" + os.sep in p]
    cuda = _ops_in(r"TORCH_LIBRARY_IMPL\(hfkernels_ext,\s*CUDA,\s*\w+\)", r'\.impl\(\s*"(\w+)"', cuda_files)
    assert CU_SOURCES and {"fuse", "fuse_backward"} <= schema
    assert cuda == schema, f"ops without a CUDA kernel: {sorted(schema - cuda)}; not in the schema: {sorted(cuda - schema)}"


# ---------------------------------------------------------------------------------------------
# CPU backend


_WITHOUT_EXTENSION = """
import json, sys, warnings
sys.modules["hfkernels._C"] = None  # importing it now fails, as when it was never built
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    import hfkernels
    from hfkernels.core.backends import get_backend
    from hfkernels.core import ext as _ext
    out = {
        "available": (_ext.ERROR is None),
        "ops": {b: sorted(get_backend(b).ops) for b in ("cpu", "cuda")},
        "torch_ops": [n for n in ("fuse", "fuse_backward") if hasattr(torch.ops.hfkernels_ext, n)],
        "fuse_works": bool(torch.isfinite(hfkernels.fuse(*[torch.rand(1, 1, 8, 8)] * 3)).all()),
        "warned": any("hfkernels._C" in str(w.message) for w in caught),
    }
print(json.dumps(out))
"""


def test_registers_nothing_without_extension():
    # a fresh interpreter in which hfkernels._C cannot be imported: the extension backends get
    # no op at all (neither in hfkernels' registry nor in torch.library), fuse still works
    # through another backend, and one warning says why
    res = subprocess.run([sys.executable, "-c", _WITHOUT_EXTENSION], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"available": False, "ops": {"cpu": [], "cuda": []}, "torch_ops": [],
                   "fuse_works": True, "warned": True}
    if _ext.ERROR is None:  # the same check sees the registration where the extension is built
        assert "fuse" in get_backend("cpu").ops and hasattr(torch.ops.hfkernels_ext, "fuse")


@needs_ext
@pytest.mark.parametrize("shape,cir,levels", [
    ((1, 1, 64, 96), 1, 4),     # even at every level: the polyphase fast paths only
    ((2, 3, 48, 40), 1, 3),     # broadcast ir, even
    ((1, 2, 50, 66), 2, 4),     # even at level 0, odd deeper: fast and generic paths mixed
    ((1, 1, 5, 3), 1, 6),       # more levels than the image has octaves
])
def test_cpu_forward_and_gradients_match_reference(shape, cir, levels):
    vis, ir, mu = _inputs(shape, cir)
    got = hk.fuse(vis, ir, mu, levels, backend="cpu")
    want = ref.fuse(vis.double(), ir.double(), mu.double(), levels)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    g = torch.rand(shape, generator=torch.Generator().manual_seed(5))
    got_g = _grads(lambda a, b, m: hk.fuse(a, b, m, levels, backend="cpu"), (vis, ir, mu), g)
    want_g = _grads(lambda a, b, m: ref.fuse(a, b, m, levels), [t.double() for t in (vis, ir, mu)], g.double())
    for name, a, b in zip(("vis", "ir", "mu"), got_g, want_g):
        assert a.shape == b.shape, name
        err = float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12))
        assert err <= 1e-4, f"grad of {name}: relative error {err:.2e}"


@needs_ext
@pytest.mark.parametrize("shape", [(1, 2, 17, 23), (2, 1, 32, 64)])
def test_cpu_float64_is_exact(shape):
    vis, ir, mu = _inputs(shape, 1, torch.float64)
    got = hk.fuse(vis, ir, mu, 5, backend="cpu")
    torch.testing.assert_close(got, ref.fuse(vis, ir, mu, 5), atol=1e-12, rtol=1e-12)


@needs_ext
@pytest.mark.parametrize("c", [0.0, 0.3, 1.0])
def test_constant_mu_is_a_plain_mix(c):
    # mu == c gives (1 - c) vis + c ir exactly (docs/design.md, 4.4), so the pyramid must cancel out
    vis, ir, _ = _inputs((1, 3, 31, 20), 1, torch.float64)
    mu = torch.full((1, 1, 31, 20), c, dtype=torch.float64)
    got = hk.fuse(vis, ir, mu, 4, backend="cpu")
    torch.testing.assert_close(got, (1 - c) * vis + c * ir, atol=1e-12, rtol=0)


@needs_ext
def test_broadcast_ir_gradient_is_channel_sum():
    vis, ir, mu = _inputs((1, 3, 12, 14), 1, torch.float64)
    g = torch.rand(1, 3, 12, 14, dtype=torch.float64)
    gb = _grads(lambda a, b, m: hk.fuse(a, b, m, 3, backend="cpu"), (vis, ir, mu), g)[1]
    gf = _grads(lambda a, b, m: hk.fuse(a, b, m, 3, backend="cpu"), (vis, ir.expand(1, 3, 12, 14), mu), g)[1]
    assert gb.shape == (1, 1, 12, 14)
    torch.testing.assert_close(gb, gf.sum(1, keepdim=True), atol=1e-12, rtol=1e-12)


@needs_ext
def test_only_requested_gradients():
    vis, ir, mu = _inputs((1, 1, 9, 9), 1)
    mu.requires_grad_()
    hk.fuse(vis, ir, mu, backend="cpu").sum().backward()
    assert mu.grad is not None and vis.grad is None and ir.grad is None


@needs_ext
def test_opcheck():
    # schema, fake (meta) implementation and autograd registration agree with the kernel
    vis, ir, mu = _inputs((1, 2, 11, 8), 1, torch.float64)
    for t in (vis, ir, mu):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.hfkernels_ext.fuse.default, (vis, ir, mu, 3))


@needs_ext
def test_raw_op_rejects_bad_arguments():
    vis, ir, mu = _inputs((1, 2, 8, 8), 1)
    op = torch.ops.hfkernels_ext.fuse
    with pytest.raises(RuntimeError, match="levels"):
        op(vis, ir, mu, 0)
    with pytest.raises(RuntimeError, match="mu"):
        op(vis, ir, mu.expand(1, 2, 8, 8), 2)
    with pytest.raises(RuntimeError, match="ir"):
        op(vis, ir[..., :4], mu, 2)
    with pytest.raises(RuntimeError, match="dtype"):
        op(vis, ir.double(), mu, 2)


@needs_ext
def test_threads_do_not_change_the_result():
    vis, ir, mu = _inputs((2, 2, 37, 45), 1)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = hk.fuse(vis, ir, mu, backend="cpu")
        torch.set_num_threads(max(2, n))
        many = hk.fuse(vis, ir, mu, backend="cpu")
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, many)


# ---------------------------------------------------------------------------------------------
# CUDA backend (only where a GPU and a CUDA build exist)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,cir", [((2, 3, 33, 20), 1), ((1, 2, 64, 48), 2), ((1, 1, 1, 1), 1)])
def test_cuda_matches_reference(dtype, shape, cir):
    vis, ir, mu = _inputs(shape, cir, dtype, "cuda")
    got = hk.fuse(vis, ir, mu, 4, backend="cuda")
    want = ref.fuse(vis.double(), ir.double(), mu.double(), 4)
    atol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=atol)
    g = torch.rand(shape, generator=torch.Generator().manual_seed(5)).to("cuda", dtype)
    got_g = _grads(lambda a, b, m: hk.fuse(a, b, m, 4, backend="cuda"), (vis, ir, mu), g)
    want_g = _grads(lambda a, b, m: ref.fuse(a, b, m, 4), [t.double() for t in (vis, ir, mu)], g.double())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for name, a, b in zip(("vis", "ir", "mu"), got_g, want_g):
        err = float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12))
        assert err <= tol, f"cuda {dtype} grad of {name}: relative error {err:.2e}"
