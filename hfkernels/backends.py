"""Backend registry: which implementations exist, where they can run, and how one is chosen.

A backend is a name (``"triton"``, ``"cuda"``, ``"cpu"``, ``"torch"``), a capability check per
device, a preference rank per device type, the dtypes it accepts and the tolerances its results
must meet against the reference. Op modules (``hfkernels/ops/*.py``) attach implementations to
a backend with :func:`implements`; the public API asks :func:`select` for one.

Selection order: the ``backend=`` argument, else the ``HFK_BACKEND`` environment variable, else
the highest-ranked backend that is available on the tensor's device, implements the op and
accepts the dtype. Asking explicitly for a backend that cannot run raises
:class:`BackendUnavailableError` with the reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

BACKEND_NAMES = ("triton", "cuda", "cpu", "torch")
ENV_VAR = "HFK_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here (the message says why)."""


@dataclass
class Backend:
    name: str
    #: ``check(device) -> (ok, reason)``; reason explains a ``False``.
    check: Callable[[torch.device], tuple[bool, str]]
    #: preference per device type; higher wins. Missing device type = cannot run there.
    rank: dict[str, int]
    #: dtypes accepted per device type.
    dtypes: dict[str, tuple[torch.dtype, ...]]
    #: (atol, rtol) against the reference, per dtype, for forward values.
    tolerances: dict[torch.dtype, tuple[float, float]]
    ops: dict[str, Callable] = field(default_factory=dict)

    def available(self, device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type not in self.rank:
            return False, f"backend {self.name!r} does not run on {device.type} devices"
        return self.check(device)


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    _load_ops()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}"
        )
    return _REGISTRY[name]


def implements(op: str, *backends: str):
    """Decorator: register ``fn`` as the implementation of ``op`` for each named backend."""

    def deco(fn):
        for b in backends:
            _REGISTRY[b].ops[op] = fn
        return fn

    return deco


_LOADED = False


def _load_ops():
    """Import the op modules once, so each registers its implementations."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from . import ops  # noqa: F401  (registration side effects)


def _device_of(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def backend_status(device=None) -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every backend on ``device`` (default: cuda if present)."""
    _load_ops()
    dev = _device_of(device)
    return {n: _REGISTRY[n].available(dev) for n in BACKEND_NAMES if n in _REGISTRY}


def available_backends(device=None) -> list[str]:
    """Names of the backends that can run on ``device`` here, most preferred first."""
    dev = _device_of(device)
    names = [n for n, (ok, _) in backend_status(dev).items() if ok]
    return sorted(names, key=lambda n: -_REGISTRY[n].rank[dev.type])


def select(op: str, device, dtype: torch.dtype, backend: str | None = None) -> tuple[str, Callable]:
    """Return ``(backend_name, implementation)`` of ``op`` for tensors on ``device`` of ``dtype``."""
    _load_ops()
    dev = torch.device(device)
    name = backend if backend is not None else (os.environ.get(ENV_VAR) or None)
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"backend must be a string or None, got {type(name).__name__}")
        source = "backend=" if backend is not None else f"{ENV_VAR}="
        b = get_backend(name)
        ok, why = b.available(dev)
        if not ok:
            raise BackendUnavailableError(f"{source}{name!r} cannot run on {dev}: {why}")
        if op not in b.ops:
            raise BackendUnavailableError(f"{source}{name!r} does not implement {op!r}")
        if dtype not in b.dtypes.get(dev.type, ()):
            ok_dt = ", ".join(str(d).replace("torch.", "") for d in b.dtypes.get(dev.type, ()))
            raise TypeError(
                f"{source}{name!r} does not support dtype {dtype} on {dev.type} (supported: {ok_dt})"
            )
        return name, b.ops[op]
    for n in available_backends(dev):
        b = _REGISTRY[n]
        if op in b.ops and dtype in b.dtypes.get(dev.type, ()):
            return n, b.ops[op]
    raise BackendUnavailableError(f"no backend implements {op!r} for {dtype} on {dev}")


def tolerance(name: str, dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) that backend ``name`` promises against the reference for ``dtype``."""
    return get_backend(name).tolerances[dtype]


# ---------------------------------------------------------------------------------------------
# Capability checks


def _always(device):
    return True, "pure PyTorch: runs wherever torch does"


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_check(device):
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return False, f"triton is not importable ({type(e).__name__}: {e})"
    if device.type == "cpu":
        if triton_interpreting():
            return True, "Triton interpreter (TRITON_INTERPRET=1): slow, for testing"
        return False, "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing triton"
    if not torch.cuda.is_available():
        return False, "torch has no CUDA device"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 7:
        return False, f"GPU compute capability {major}.x is below 7.0"
    return True, "Triton on CUDA"


def _ext_check(device):
    from . import _ext

    if _ext.ERROR is not None:
        return False, f"the C++ extension hfkernels._C is not built ({_ext.ERROR})"
    if device.type == "cuda":
        if not _ext.HAS_CUDA:
            return False, "hfkernels._C was built without CUDA kernels"
        if not torch.cuda.is_available():
            return False, "torch has no CUDA device"
        return True, "C++/CUDA extension"
    return True, "C++ extension (at::parallel_for, vectorised)"


_F32_64 = (torch.float32, torch.float64)
_ALL = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_GPU = (torch.float32, torch.float16, torch.bfloat16)
_TOL_EXACT = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

register_backend(Backend("torch", _always, {"cuda": 0, "cpu": 10}, {"cpu": _ALL, "cuda": _ALL}, _TOL_EXACT))
register_backend(Backend("cpu", _ext_check, {"cpu": 20}, {"cpu": _F32_64}, _TOL_EXACT))
register_backend(Backend("cuda", _ext_check, {"cuda": 20}, {"cuda": _GPU}, _TOL_EXACT))
# The interpreter is correct but slow: on CPU it ranks last.
register_backend(Backend("triton", _triton_check, {"cuda": 30, "cpu": -1}, {"cpu": _F32_64 + (torch.float16, torch.bfloat16), "cuda": _GPU}, _TOL_EXACT))
