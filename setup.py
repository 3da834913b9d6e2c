"""Builds hfkernels and its C++/CUDA extension ``hfkernels._C``.

    pip install --no-build-isolation .      # or -e .

CPU sources (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always compiled. CUDA sources
(``csrc/cuda/*.cu`` and their torch glue ``csrc/cuda/*.cpp``) are added when torch was built with
CUDA and nvcc is found. Switches: ``HFK_CUDA=0`` forces CUDA off, ``HFK_CUDA=1`` requires it
(an error if it cannot be built). A compile error fails the install.
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    out = []
    for p in patterns:
        out += sorted(glob.glob(os.path.join(ROOT, p)))
    return [os.path.relpath(s, ROOT) for s in out]


def extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpu = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
    if not cpu:
        return [], {}
    want = os.environ.get("HFK_CUDA", "auto")
    can = torch.version.cuda is not None and CUDA_HOME is not None
    if want == "1" and not can:
        raise RuntimeError(
            f"HFK_CUDA=1 but CUDA cannot be built (torch CUDA {torch.version.cuda}, CUDA_HOME {CUDA_HOME})"
        )
    use_cuda = can and want != "0"
    cxx = ["-O3", "-std=c++17", "-fopenmp" if os.name != "nt" else "/openmp"]
    if os.name != "nt":
        cxx += ["-march=x86-64-v2"] if os.uname().machine == "x86_64" else []
    if use_cuda:
        ext = CUDAExtension(
            "hfkernels._C",
            cpu + _sources("csrc/cuda/*.cu", "csrc/cuda/*.cpp"),
            define_macros=[("HFK_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            extra_link_args=["-fopenmp"] if os.name != "nt" else [],
        )
    else:
        ext = CppExtension(
            "hfkernels._C", cpu, extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"] if os.name != "nt" else [],
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
