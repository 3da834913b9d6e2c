"""hfkernels: fast, faithful hybrid image fusion (Laplacian-pyramid blending guided by ``mu``).

The semantics every backend implements, the metric protocol, the backend table and how to add
an op or a backend: docs/design.md.
"""
from __future__ import annotations

import importlib
import os as _os

__version__ = "0.1.0"

# libgomp reads its spin count once, when torch loads it. Its default (300,000 spins) keeps idle
# OpenMP threads spinning between torch's many small parallel ops, so beside one other busy
# process training ran at a third of its quiet speed; with 1000 spins waiting threads yield
# (measured: 18 -> 25 img/s beside one busy process, quiet speed unchanged within noise; see
# benchmarks/under_load.py). A user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY always wins, and
# nothing changes if torch was imported before hfkernels.
if "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "1000"

from .core.backends import BackendUnavailableError, available_backends, backend_status
from .core.fusion import (
    LaplacianPyramidFusion,
    fuse,
    fuse_color,
    heuristic_blend,
    heuristic_guidance,
    laplacian_pyramid,
    reconstruct,
    with_luma,
)

# Loaded on first use so `import hfkernels` stays light.
# name -> (module, attribute or None for the module itself)
_LAZY = {
    "ssim": ("core.losses", "ssim"),
    "ssim_loss": ("core.losses", "ssim_loss"),
    "gradient_max_loss": ("core.losses", "gradient_max_loss"),
    "FusionLoss": ("core.losses", "FusionLoss"),
    "metrics": ("metrics", None),
    "models": ("guidance.models", None),
    "fuse_video": ("video", "fuse_video"),
    "video": ("video", None),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(f".{module}", __name__)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'hfkernels' has no attribute {name!r}")


__all__ = [
    "__version__",
    "BackendUnavailableError",
    "available_backends",
    "backend_status",
    "LaplacianPyramidFusion",
    "fuse",
    "fuse_color",
    "heuristic_blend",
    "heuristic_guidance",
    "laplacian_pyramid",
    "reconstruct",
    "with_luma",
    *_LAZY,
]
