"""hfkernels: fast, faithful hybrid image fusion (Laplacian-pyramid blending guided by ``mu``)."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .backends import BackendUnavailableError, available_backends, backend_status
from .fusion import (
    fuse,
    fuse_color,
    heuristic_blend,
    heuristic_guidance,
    laplacian_pyramid,
    reconstruct,
)

# Loaded on first use so `import hfkernels` stays light.
_LAZY = {
    "ssim": "losses",
    "ssim_loss": "losses",
    "gradient_max_loss": "losses",
    "FusionLoss": "losses",
    "metrics": None,
    "models": None,
}


def __getattr__(name):
    if name in _LAZY:
        mod = importlib.import_module(f".{_LAZY[name] or name}", __name__)
        return mod if _LAZY[name] is None else getattr(mod, name)
    raise AttributeError(f"module 'hfkernels' has no attribute {name!r}")


__all__ = [
    "__version__",
    "BackendUnavailableError",
    "available_backends",
    "backend_status",
    "fuse",
    "fuse_color",
    "heuristic_blend",
    "heuristic_guidance",
    "laplacian_pyramid",
    "reconstruct",
    *_LAZY,
]
