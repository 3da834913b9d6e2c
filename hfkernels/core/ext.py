"""Loads the compiled extension ``hfkernels._C`` if it was built.

The package imports without it (a source checkout on ``PYTHONPATH``); the ``"cpu"`` and
``"cuda"`` backends then report themselves unavailable and a single warning says so.
"""
from __future__ import annotations

import warnings

ERROR: str | None = None
HAS_CUDA = False
_C = None

try:
    from .. import _C  # type: ignore[attr-defined]  # noqa: F811

    HAS_CUDA = bool(getattr(_C, "HAS_CUDA", False))
except Exception as e:  # ImportError, or an ABI mismatch with the installed torch
    ERROR = f"{type(e).__name__}: {e}"
    warnings.warn(
        "hfkernels: the C++ extension hfkernels._C is not available, so the 'cpu' and 'cuda' "
        "backends are missing (install with `pip install --no-build-isolation .`). "
        f"Reason: {ERROR}",
        RuntimeWarning,
        stacklevel=2,
    )
