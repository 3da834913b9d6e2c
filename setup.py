"""Builds hfkernels and its C++/CUDA extension ``hfkernels._C`` against the installed torch.

    pip install torch   # first: the extension is compiled against this torch's headers and ABI
    pip install --no-build-isolation .      # or -e .

CPU sources (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always compiled. CUDA sources
(``csrc/cuda/*.cu`` and their torch glue ``csrc/cuda/*.cpp``) are added when torch was built with
CUDA and nvcc is found. Switches: ``HFK_CUDA=0`` forces CUDA off, ``HFK_CUDA=1`` requires it
(an error if it cannot be built). A compile error fails the install.

Build settings taken from the installed torch and toolkit, so that one setup.py builds on every
torch that pyproject.toml declares, with or without a visible GPU:

* the C++ standard (host compiler and nvcc): the one torch's own headers demand (C++17 up to
  torch 2.13, C++20 from 2.14), see ``cxx_standard``;
* ``CUDA_HOME``: when unset, a toolkit that really holds ``include/cuda_runtime.h``, see
  ``find_cuda_home``;
* CUDA architectures: ``TORCH_CUDA_ARCH_LIST`` if set, else the visible GPUs (torch's own
  detection), else ``DEFAULT_CUDA_ARCHS`` less what this nvcc cannot target.
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))

# Built when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset (Docker build stage, login
# node, CI): T4 (7.5), A100 (8.0), RTX 4090 / L4 (8.9), H100 / H200 (9.0). "+PTX" on the newest
# also embeds its PTX so that newer cards (Blackwell) can JIT-compile it.
DEFAULT_CUDA_ARCHS = ("7.5", "8.0", "8.9", "9.0")


def _sources(*patterns):
    out = []
    for p in patterns:
        out += sorted(glob.glob(os.path.join(ROOT, p)))
    return [os.path.relpath(s, ROOT) for s in out]


def cxx_standard(torch):
    """The ``-std`` value the installed torch's headers require, e.g. ``"c++20"``.

    ATen/ATen.h states its minimum as ``#if __cplusplus < 2xxxxxL / #error``; reading it keeps
    C++17 for the torches that accept it and follows a future bump without an edit here. Falls
    back on the torch version when the header cannot be read.
    """
    header = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "ATen.h")
    try:
        with open(header, encoding="utf-8") as f:
            m = re.search(r"__cplusplus\s*<\s*(\d{6})L", f.read())
    except OSError:
        m = None
    if m:
        year = int(m.group(1)) // 100
        return {2014: "c++14", 2017: "c++17", 2020: "c++20", 2023: "c++23"}.get(year, "c++20")
    major, minor = (int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    return "c++20" if (major, minor) >= (2, 14) else "c++17"


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) and (
        os.path.isfile(os.path.join(path, "bin", "nvcc")) or os.path.isfile(os.path.join(path, "bin", "nvcc.exe"))
    )


def find_cuda_home(cuda_version, prefix="/usr/local"):
    """A CUDA toolkit root for ``cuda_version`` (torch's, e.g. ``"13.0"``), or None.

    torch's own guess is ``dirname(dirname(which nvcc))``; a wrapper script such as
    ``/usr/local/bin/nvcc`` makes that ``/usr/local``, which has no CUDA headers, and the build
    then fails deep inside the compiler. So: ``CUDA_HOME``/``CUDA_PATH`` if set, else the first
    of nvcc's root, ``{prefix}/cuda`` and ``{prefix}/cuda-{major}.*`` (newest first) that holds
    both ``bin/nvcc`` and ``include/cuda_runtime.h``.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    major = cuda_version.split(".")[0] if cuda_version else ""
    versioned = glob.glob(os.path.join(prefix, f"cuda-{major}.*"))
    versioned.sort(key=lambda p: [int(x) for x in re.findall(r"\d+", os.path.basename(p))], reverse=True)
    candidates += [os.path.join(prefix, "cuda")] + versioned
    toolkits = [c for c in candidates if _is_toolkit(c)]
    # torch refuses a toolkit of another major version than its own: prefer a matching one.
    return next((c for c in toolkits if nvcc_version(c).split(".")[0] == major), toolkits[0] if toolkits else None)


def nvcc_version(cuda_home):
    """``"13.0"`` from ``nvcc --version`` of the toolkit at ``cuda_home``; ``""`` if unknown."""
    try:
        out = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else ""


def default_arch_list(cuda_home):
    """``TORCH_CUDA_ARCH_LIST`` for a build that sees no GPU: DEFAULT_CUDA_ARCHS that nvcc lists."""
    try:
        out = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"], capture_output=True, text=True, check=True
        ).stdout
        known = {f"{m[:-1]}.{m[-1]}" for m in re.findall(r"compute_(\d+)", out)}
    except (OSError, subprocess.CalledProcessError):
        known = set(DEFAULT_CUDA_ARCHS)  # nvcc older than 11 has no --list-gpu-arch: try them all
    archs = [a for a in DEFAULT_CUDA_ARCHS if a in known]
    if not archs:
        raise RuntimeError(f"nvcc in {cuda_home} targets none of {DEFAULT_CUDA_ARCHS}; set TORCH_CUDA_ARCH_LIST")
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def cuda_arch_list(torch, cuda_home):
    """The ``TORCH_CUDA_ARCH_LIST`` the CUDA kernels are built for, e.g. ``"8.0;9.0+PTX"``.

    The variable if set; else the visible GPUs' architectures, the newest with ``+PTX`` (what
    torch's build detects then); else :func:`default_arch_list`.
    """
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = [f"{major}.{minor}" for major, minor in caps]
        return ";".join(archs[:-1] + [archs[-1] + "+PTX"])
    return default_arch_list(cuda_home)


def nvcc_flags(torch):
    """nvcc's options for the ``.cu`` sources besides the architectures: optimisation and the
    C++ standard of :func:`cxx_standard` (the host compiler and nvcc must agree)."""
    return ["-O3", f"-std={cxx_standard(torch)}"]


def nvcc_arch_flags(arch_list):
    """``-gencode`` options for an arch list such as ``"8.0;9.0+PTX"``: SASS for each, plus PTX
    for those marked ``+PTX`` (what torch's build passes nvcc for the same list)."""
    flags = []
    for arch in re.split(r"[;\s]+", arch_list.strip()):
        num = arch.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


class _NeedsTorch(build_ext):
    def run(self):
        raise RuntimeError(
            "hfkernels compiles its extension against the installed torch, and none is importable "
            "here (an isolated build environment?). Install torch first, then "
            "`pip install --no-build-isolation .` (or `python -m build --no-isolation`)."
        )


def extensions():
    cpu = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
    try:
        import torch
    except ImportError:
        # Metadata and the sdist need no compiler; a wheel must not silently lack the extension.
        return [Extension("hfkernels._C", cpu)], {"build_ext": _NeedsTorch}
    if not cpu:
        return [], {}

    want = os.environ.get("HFK_CUDA", "auto")
    cuda_home = find_cuda_home(torch.version.cuda) if torch.version.cuda and want != "0" else None
    if cuda_home:
        # cpp_extension reads CUDA_HOME once, when it is first imported.
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    why = None
    if torch.version.cuda is None:
        why = "torch has no CUDA"
    elif CUDA_HOME is None or not _is_toolkit(CUDA_HOME):
        why = f"no CUDA toolkit (CUDA_HOME {CUDA_HOME} needs bin/nvcc and include/cuda_runtime.h; set CUDA_HOME)"
    elif nvcc_version(CUDA_HOME).split(".")[0] != torch.version.cuda.split(".")[0]:
        why = f"nvcc {nvcc_version(CUDA_HOME) or '?'} in {CUDA_HOME} does not match torch's CUDA {torch.version.cuda}"
    if want == "1" and why:
        raise RuntimeError(f"HFK_CUDA=1 but the CUDA kernels cannot be built: {why}")
    use_cuda = want != "0" and why is None
    if torch.version.cuda and want == "auto" and why:
        print(f"hfkernels: building without CUDA kernels: {why}")
    std = cxx_standard(torch)
    cxx = ["-O3", f"-std={std}", "-fopenmp" if os.name != "nt" else "/openmp"]
    if os.name != "nt":
        cxx += ["-march=x86-64-v2"] if os.uname().machine == "x86_64" else []
    link = ["-fopenmp"] if os.name != "nt" else []
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
            # torch's detection reads the visible GPUs and fails (IndexError) on an empty list.
            os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list(torch, CUDA_HOME)
            print(f"hfkernels: no GPU visible, building for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        # No --use_fast_math. Compiled both ways to PTX for sm_90, the kernels have the same
        # instructions but two changes: every f32 add/mul/fma/compare gets .ftz (denormals
        # flushed to zero, which the CPU backend and the reference never do: small backward
        # gradients would become 0), and the SSIM pass's 3 IEEE divisions and 1 reciprocal turn
        # into div.approx/rcp.approx (up to 2 ulp). Nothing else (no sqrt/exp in the kernels),
        # so these memory-bound stencils gain no time that could show, and parity would lose.
        # FMA contraction (nvcc's default, also on without fast math) stays.
        ext = CUDAExtension(
            "hfkernels._C",
            cpu + _sources("csrc/cuda/*.cu", "csrc/cuda/*.cpp"),
            define_macros=[("HFK_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc_flags(torch)},
            extra_link_args=link,
        )
    else:
        ext = CppExtension("hfkernels._C", cpu, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # importable by the tests without building anything
    ext_modules, cmdclass = extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
