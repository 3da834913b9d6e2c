"""hfkernels: fast, faithful hybrid image fusion (Laplacian-pyramid blending guided by ``mu``)."""
from __future__ import annotations

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
]
