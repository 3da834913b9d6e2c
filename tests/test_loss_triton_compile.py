"""The Triton loss kernels compile for a real GPU target (sm_90), not only in the interpreter.

The interpreter accepts code that the compiler rejects, and CI has no GPU, so every loss kernel
is compiled to cubin in a fresh process without TRITON_INTERPRET (no GPU needed).
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import hfkernels as hk

_SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from hfkernels.ops import loss_triton as lt

    def compile_(kernel, ptr, **consts):
        # every runtime argument is a tensor or an int (upper-case names): no float scalars,
        # which would reach the kernel as float32 (test_float64_launches_pass_no_python_floats)
        sig = {p.name: "constexpr" if p.is_constexpr else "i32" if p.name.isupper() else ptr
               for p in kernel.params}
        triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32))

    for acc64, ptr in ((False, "*fp32"), (True, "*fp64")):
        t = dict(ACC64=acc64, BH=16, BW=64)
        for k in (lt._ssim_h_kernel, lt._rows_filter_kernel, lt._ssim_hT_kernel,
                  lt._gmax_fwd_kernel, lt._gmax_coef_kernel, lt._gmax_adjoint_kernel):
            compile_(k, ptr, **t)
        compile_(lt._ssim_v_kernel, ptr, BACKWARD=False, **t)
        compile_(lt._ssim_v_kernel, ptr, BACKWARD=True, **t)
    print("compiled")
""")


def test_loss_kernels_compile_for_sm90():
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Triton's NVIDIA backend is unavailable: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and "ptxas" in res.stderr and shutil.which("ptxas") is None and "No such file" in res.stderr:
        pytest.skip("ptxas is not available")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-4000:]


@pytest.mark.parametrize("module", ["loss_triton", "fuse_triton"])
def test_float64_launches_pass_no_python_floats(module, monkeypatch):
    # Triton types a Python float argument as float32 in a compiled kernel (the interpreter keeps
    # it float64), which cost float64 SSIM and gradient-max ~1e-8 of accuracy on a GPU: every
    # scalar of a launch must be an int (sizes, offsets) and every value a tensor
    import importlib

    if "triton" not in hk.available_backends("cpu"):
        pytest.skip("the triton backend cannot run here (set TRITON_INTERPRET=1)")
    mod = importlib.import_module(f"hfkernels.ops.{module}")
    seen = []
    real = mod._TILES.launch

    def spy(runner, rows, cols, *args, **meta):
        seen.append([a for a in args if isinstance(a, float)])
        return real(runner, rows, cols, *args, **meta)

    monkeypatch.setattr(mod._TILES, "launch", spy)
    g = torch.Generator().manual_seed(0)
    x, y, f = (torch.rand(1, 2, 9, 11, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    if module == "loss_triton":
        out = hk.ssim(x, y, 5, backend="triton") + hk.gradient_max_loss(x, y, f, backend="triton")
    else:
        out = hk.fuse(x, y, f[:, :1], 2, backend="triton").sum()
    out.backward()
    assert seen and not any(seen), f"float scalars passed to {module} kernels: {seen}"
