"""The build: setup.py's choices, the sdist's contents, and the kernels the extension registers.

``HFK_EXPECT_CUDA=1`` (set by CI's CUDA build) turns a missing CUDA part of the extension from a
skip into a failure; CI then runs this file against the installed package from outside the
checkout, so it checks the wheel built from the sdist, not the source tree.
"""
import importlib.util
import os
import stat
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest
import torch

import hfkernels
from hfkernels.core import ext as _ext

REPO = Path(__file__).resolve().parents[1]
EXPECT_CUDA = os.environ.get("HFK_EXPECT_CUDA") == "1"


def _load_setup():
    spec = importlib.util.spec_from_file_location("hfk_setup", REPO / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # setup() runs only under __main__
    return mod


def _ext_ops():
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("hfkernels_ext::"))


# --- the compiled extension --------------------------------------------------------------------


def test_extension_registers_cpu_kernel_for_every_op():
    assert _ext.ERROR is None, _ext.ERROR
    ops = _ext_ops()
    assert {"hfkernels_ext::fuse", "hfkernels_ext::fuse_backward", "hfkernels_ext::ssim_forward"} <= set(ops)
    missing = [n for n in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")]
    assert not missing, f"no CPU kernel: {missing}"


def test_extension_registers_cuda_kernel_for_every_op():
    if not _ext.HAS_CUDA:
        if EXPECT_CUDA:
            pytest.fail(f"HFK_EXPECT_CUDA=1 but {hfkernels.__file__} was built without CUDA")
        pytest.skip("extension built without CUDA")
    ops = _ext_ops()
    assert ops
    missing = [n for n in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
    assert not missing, f"no CUDA kernel: {missing}"


def test_installed_extension_fuses_like_the_reference():
    """A smoke run of the built library (CPU kernels), whatever torch it was built against."""
    g = torch.Generator().manual_seed(0)
    vis, ir, mu = (torch.rand(1, c, 24, 40, generator=g) for c in (3, 1, 1))
    got = hfkernels.fuse(vis, ir, mu, levels=3, backend="cpu")
    want = hfkernels.fuse(vis, ir, mu, levels=3, backend="torch")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_installed_package_ships_the_default_guide():
    """The trained guide and its record are package data: an installed wheel fuses with it."""
    from hfkernels import guidance as G

    assert G.packaged_guides() == [G.SHIPPED_GUIDE]
    card = G.guide_card()
    vis, ir = torch.rand(1, 3, 20, 28), torch.rand(1, 1, 20, 28)
    mu = G.default_guidance()(vis, ir)
    assert getattr(G.default_guidance(), "name", None) == G.SHIPPED_GUIDE
    assert mu.shape == (1, 1, 20, 28) and card["model"]["guide"] == "residual"


# --- setup.py's choices ------------------------------------------------------------------------


def _fake_torch(tmp_path, version, header_text):
    root = tmp_path / "torch"
    (root / "include" / "ATen").mkdir(parents=True)
    if header_text is not None:
        (root / "include" / "ATen" / "ATen.h").write_text(header_text)
    return types.SimpleNamespace(__file__=str(root / "__init__.py"), __version__=version)


@pytest.mark.parametrize(
    ("version", "header", "want"),
    [
        ("2.13.0", "#if !defined(_MSC_VER) && __cplusplus < 201703L\n#error C++17\n#endif\n", "c++17"),
        ("2.14.1", "#if !defined(_MSC_VER) && __cplusplus < 202002L\n#error C++20\n#endif\n", "c++20"),
        ("2.14.1+cu130", None, "c++20"),  # no header to read: the version decides
        ("2.13.0+cpu", None, "c++17"),
    ],
)
def test_cxx_standard_follows_torch_headers(tmp_path, version, header, want):
    assert _load_setup().cxx_standard(_fake_torch(tmp_path, version, header)) == want


def test_cxx_standard_of_installed_torch_compiles_its_headers():
    """The standard chosen for this torch is at least what its ATen.h demands."""
    std = _load_setup().cxx_standard(torch)
    header = Path(torch.__file__).parent / "include" / "ATen" / "ATen.h"
    if "__cplusplus < 202002L" in header.read_text():
        assert std in ("c++20", "c++23")
    else:
        assert std == "c++17"


def _exe(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _toolkit(root, archs=("75", "80", "86", "89", "90", "100", "120"), release="13.0"):
    listing = "".join(f"echo compute_{a}\n" for a in archs)
    _exe(root / "bin" / "nvcc", (
        "#!/bin/sh\n"
        f"[ \"$1\" = --list-gpu-arch ] && {{ {listing} exit 0; }}\n"
        f"[ \"$1\" = --version ] && {{ echo 'Cuda compilation tools, release {release}, V{release}.1'; exit 0; }}\n"
        "exit 1\n"
    ))
    (root / "include").mkdir(parents=True, exist_ok=True)
    (root / "include" / "cuda_runtime.h").write_text("")
    return root


def test_find_cuda_home_skips_a_wrapper_without_headers(tmp_path, monkeypatch):
    # /usr/local/bin/nvcc as a wrapper script: torch would take /usr/local as CUDA_HOME.
    wrapper = tmp_path / "local" / "bin" / "nvcc"
    _exe(wrapper, "#!/bin/sh\nexit 0\n")
    _toolkit(tmp_path / "local" / "cuda-12.8", release="12.8")
    real = _toolkit(tmp_path / "local" / "cuda-13.0")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrapper.parent))
    assert _load_setup().find_cuda_home("13.0", prefix=str(tmp_path / "local")) == str(real)


def test_find_cuda_home_prefers_the_toolkit_of_torchs_major_version(tmp_path, monkeypatch):
    # /usr/local/cuda is an older toolkit; torch was built with CUDA 13 (torch refuses 12 for it)
    _toolkit(tmp_path / "cuda", release="12.8")
    real = _toolkit(tmp_path / "cuda-13.0")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    setup_py = _load_setup()
    assert setup_py.find_cuda_home("13.0", prefix=str(tmp_path)) == str(real)
    assert setup_py.nvcc_version(str(real)) == "13.0"


def test_find_cuda_home_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "mine"))
    assert _load_setup().find_cuda_home("13.0", prefix=str(tmp_path)) == str(tmp_path / "mine")


def test_default_arch_list_without_a_gpu(tmp_path):
    setup_py = _load_setup()
    assert setup_py.default_arch_list(str(_toolkit(tmp_path / "a"))) == "7.5;8.0;8.9;9.0+PTX"
    # a toolkit that dropped Turing: the list shrinks instead of failing the build
    assert setup_py.default_arch_list(str(_toolkit(tmp_path / "b", ("80", "89", "90", "100")))) == "8.0;8.9;9.0+PTX"


# --- the source distribution -------------------------------------------------------------------


@pytest.mark.skipif(not (REPO / "setup.py").exists(), reason="needs the source checkout")
def test_sdist_ships_every_extension_source(tmp_path):
    """Every file under csrc/ is in the sdist, so a build from it finds every header and .cu; so
    are the packaged guide and the design doc."""
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "--dist-dir", str(tmp_path)],
        cwd=REPO, check=True, capture_output=True, env={**os.environ, "HFK_CUDA": "0"},
    )
    (tarball,) = tmp_path.glob("hfkernels-*.tar.gz")
    with tarfile.open(tarball) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    want = {p.relative_to(REPO).as_posix() for p in (REPO / "csrc").rglob("*") if p.is_file()}
    want |= {p.relative_to(REPO).as_posix() for p in (REPO / "hfkernels" / "guidance" / "guides").iterdir()}
    want |= {"docs/design.md"}
    assert {"csrc/cpu/fuse_plan.h", "csrc/cuda/fuse_kernels.cu", "csrc/cuda/fuse_kernels.cuh"} <= want
    assert not want - names, f"missing from the sdist: {sorted(want - names)}"
    assert not [n for n in names if n.endswith((".so", ".o"))]
