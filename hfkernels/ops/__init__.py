"""Op implementations; importing this package registers every backend's ops.

One module per op family and backend (Liger-Kernel style). A module whose optional dependency
is missing (no triton, no compiled extension) must import cleanly and register nothing; the
backend registry then reports why that backend is unavailable.
"""
import importlib
import importlib.util

MODULES = ("fuse_torch", "fuse_triton", "fuse_ext", "loss_torch", "loss_triton", "loss_ext")

for _m in MODULES:
    if importlib.util.find_spec(f"{__name__}.{_m}") is not None:
        importlib.import_module(f"{__name__}.{_m}")
